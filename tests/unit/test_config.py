"""Settings and connection files: secrets come from env or files and never show."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from worker.cli import app
from worker.config import ConnectionsFile, KafkaSettings, SecretRef, Settings, TopicSettings, unknown_env_vars
from worker.errors import ConfigError
from worker.testing import worker_env


class TestKafkaSecrets:
    def test_sasl_password_file_reaches_librdkafka_but_not_repr(self, tmp_path: Path) -> None:
        secret = tmp_path / "pw"
        secret.write_text("s3cr3t-from-file\n")
        settings = Settings(kafka=KafkaSettings(sasl_username="u", sasl_password_file=secret), kafka_bootstrap="b:9092")
        assert settings.librdkafka()["sasl.password"] == "s3cr3t-from-file"
        assert "s3cr3t" not in repr(settings)

    def test_inline_sasl_password_is_masked_in_repr(self) -> None:
        settings = Settings(kafka=KafkaSettings(sasl_password="hunter2"), kafka_bootstrap="b:9092")
        assert settings.librdkafka()["sasl.password"] == "hunter2"
        assert "hunter2" not in repr(settings) and "hunter2" not in settings.model_dump_json()

    def test_kafka_bootstrap_alias(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KAFKA_BOOTSTRAP", "alias-host:9092")
        assert Settings().kafka_bootstrap == "alias-host:9092"


class TestConnectionsFile:
    def test_toml_with_secret_refs(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (tmp_path / "secret").write_text("from-file")
        monkeypatch.setenv("EP_SECRET", "from-env")
        path = tmp_path / "connections.toml"
        path.write_text(
            f"""
[connections.itron]
vendor = "itron"
base_url = "https://example.invalid"
client_id = "c"
client_secret = {{ file = "{tmp_path / "secret"}" }}
subscriber_id = "s"

[connections.ep]
vendor = "elasticpath"
base_url = "https://example.invalid"
client_id = "c"
client_secret = {{ env = "EP_SECRET" }}
policy = {{ poll_initial_s = 12 }}
"""
        )
        conns = ConnectionsFile.load(path).connections
        assert conns["itron"].client_secret is not None
        assert conns["itron"].client_secret.resolve().get_secret_value() == "from-file"
        assert conns["ep"].client_secret is not None
        assert conns["ep"].client_secret.resolve().get_secret_value() == "from-env"
        assert conns["ep"].policy.overrides() == {"poll_initial_s": 12}

    def test_missing_env_secret_names_the_variable_not_a_value(self) -> None:
        with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
            SecretRef(env="NOT_SET_ANYWHERE").resolve()

    def test_a_secret_needs_exactly_one_source(self) -> None:
        with pytest.raises(ValueError, match="exactly one"):
            SecretRef(env="A", value="b")  # type: ignore[arg-type]

    def test_unknown_vendor_is_refused_with_the_file_name(self, tmp_path: Path) -> None:
        path = tmp_path / "c.json"
        path.write_text('{"connections": {"x": {"vendor": "nope", "base_url": "http://x"}}}')
        with pytest.raises(ConfigError, match=r"c\.json"):
            ConnectionsFile.load(path)


class TestUnknownEnvVars:
    def test_settings_nested_settings_and_aliases_are_known(self) -> None:
        environ = {
            "EXPORT_WORKER_KAFKA_BOOTSTRAP": "b:9092",
            "EXPORT_WORKER_GROUP_ID": "g",
            "EXPORT_WORKER_HTTP_PORT": "0",
            "EXPORT_WORKER_SCHEMA_REGISTRY_BASIC_AUTH": "u:p",
            "EXPORT_WORKER_KAFKA__SASL_PASSWORD_FILE": "/run/pw",
            "EXPORT_WORKER_KAFKA__EXTRA": '{"linger.ms": "5"}',
            "EXPORT_WORKER_KAFKA__EXTRA__LINGER_MS": "5",
            "EXPORT_WORKER_TOPICS__PARTITIONS": "12",
            "EXPORT_WORKER_TOPICS": '{"create": false}',
            "EXPORT_WORKER_KAFKA": '{"sasl_username": "u"}',
        }
        assert unknown_env_vars(environ) == []

    def test_mistyped_names_are_reported_sorted(self) -> None:
        environ = {
            "EXPORT_WORKER_TOPICS__PARTITON": "12",
            "EXPORT_WORKER_GROUPID": "g",
            "EXPORT_WORKER_KAFKA__SASL_PASSWD": "x",
            "EXPORT_WORKER_HTTP_PORT__X": "1",
            "EXPORT_WORKER_KAFKA_SASL_PASSWORD": "x",  # one underscore where two were meant
            "EXPORT_WORKER_TOPICS__PARTITIONS": "12",
        }
        assert unknown_env_vars(environ) == [
            "EXPORT_WORKER_GROUPID",
            "EXPORT_WORKER_HTTP_PORT__X",
            "EXPORT_WORKER_KAFKA_SASL_PASSWORD",
            "EXPORT_WORKER_KAFKA__SASL_PASSWD",
            "EXPORT_WORKER_TOPICS__PARTITON",
        ]

    def test_other_variables_and_the_projects_own_are_not_settings_typos(self) -> None:
        environ = {
            "PATH": "/usr/bin",
            "KAFKA_BOOTSTRAP": "b:9092",
            "EXPORTWORKER_GROUP_ID": "g",
            "EXPORT_WORKER_CACHE_DIR": "/cache",
            "EXPORT_WORKER_KAFKA_VERSION": "4.1.0",
            "EXPORT_WORKER_TEST_LOG_LEVEL": "debug",
        }
        assert unknown_env_vars(environ) == []

    def test_names_match_case_insensitively_and_are_reported_as_given(self) -> None:
        """pydantic-settings reads ``export_worker_group_id`` too."""
        assert unknown_env_vars({"export_worker_group_id": "g", "Export_Worker_Grup_Id": "g"}) == [
            "Export_Worker_Grup_Id"
        ]

    @pytest.mark.parametrize(
        ("name", "value", "read"),
        [
            ("EXPORT_WORKER_TOPICS__PARTITIONS", "12", lambda s: s.topics.partitions == 12),
            ("EXPORT_WORKER_KAFKA__SASL_MECHANISM", "PLAIN", lambda s: s.kafka.sasl_mechanism == "PLAIN"),
            ("EXPORT_WORKER_KAFKA__EXTRA__LINGER_MS", "7", lambda s: s.kafka.extra == {"linger_ms": "7"}),
            ("export_worker_http_port", "0", lambda s: s.http_port == 0),
        ],
    )
    def test_a_known_name_is_one_settings_reads(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str, read: Callable[[Settings], bool]
    ) -> None:
        monkeypatch.setenv(name, value)
        assert unknown_env_vars({name: value}) == []
        assert read(Settings())

    @pytest.mark.parametrize(
        "name", ["EXPORT_WORKER_TOPICS__PARTITON", "EXPORT_WORKER_HTTPPORT", "EXPORT_WORKER_KAFKA__SASL_MECH"]
    )
    def test_an_unknown_name_is_one_settings_ignores(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        for key in [k for k in os.environ if k.upper().startswith("EXPORT_WORKER_")]:
            monkeypatch.delenv(key)
        default = Settings(instance_id="i").model_dump()
        monkeypatch.setenv(name, "1")
        assert unknown_env_vars({name: "1"}) == [name]
        assert Settings(instance_id="i").model_dump() == default

    def test_the_environment_given_to_spawned_workers_is_all_known(self, tmp_path: Path) -> None:
        settings = Settings(kafka_bootstrap="b:9092", topics=TopicSettings().prefixed("t."))
        env = worker_env(settings, connections_file=str(tmp_path / "c.json"), instance_id="w1", http_port=0)
        assert [k for k in env if k.startswith("EXPORT_WORKER_")]
        assert unknown_env_vars(env) == []

    def test_run_warns_once_per_unknown_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``export-worker run`` says which variables it ignores, in its log, before starting."""
        started: list[Settings] = []

        class NoWorker:
            producer_stuck = False

            def __init__(self, settings: Settings) -> None:
                started.append(settings)

            async def run(self, stop: object) -> None:
                return None

        monkeypatch.setattr("worker.runtime.Worker", NoWorker)
        for key in [k for k in os.environ if k.upper().startswith("EXPORT_WORKER_")]:
            monkeypatch.delenv(key)
        saved = structlog.get_config()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        env = {
            "EXPORT_WORKER_LOG_FORMAT": "json",
            "EXPORT_WORKER_LOG_LEVEL": "info",
            "EXPORT_WORKER_GROUP_ID": "g",
            "EXPORT_WORKER_TOPICS__PARTITON": "12",
            "EXPORT_WORKER_GROUPID": "g",
        }
        try:
            result = CliRunner().invoke(app, ["run"], env=env)
        finally:
            structlog.configure(**saved)
            root.handlers[:] = handlers
            root.setLevel(level)
        assert result.exit_code == 0, result.output
        assert [s.group_id for s in started] == ["g"]
        warnings = [json.loads(line) for line in result.stderr.splitlines() if "unknown setting" in line]
        assert [(w["event"], w["level"], w["name"]) for w in warnings] == [
            ("unknown setting ignored", "warning", "EXPORT_WORKER_GROUPID"),
            ("unknown setting ignored", "warning", "EXPORT_WORKER_TOPICS__PARTITON"),
        ]
