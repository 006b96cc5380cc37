"""Settings and connection files: secrets come from env or files and never show."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from worker.cli import app
from worker.config import (
    ConnectionConfig,
    ConnectionsFile,
    KafkaSettings,
    PolicyConfig,
    SecretRef,
    Settings,
    TopicSettings,
    unknown_env_vars,
)
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

    def test_spawned_workers_get_the_state_settings(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A worker started from ``worker_env`` keeps its stores in the caller's state dir,
        made absolute (a relative one is the caller's, whatever the child's cwd), with the
        caller's store sizes, not its own defaults."""
        monkeypatch.chdir(tmp_path)
        settings = Settings(
            state_dir=Path("state"),
            state_cache_mb=96,
            state_write_buffer_mb=24,
            state_max_mb=100,
            state_cleanup_s=5.5,
        )
        env = worker_env(settings, connections_file=str(tmp_path / "c.json"), instance_id="w1")
        for key in [k for k in os.environ if k.upper().startswith("EXPORT_WORKER_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("EXPORT_WORKER_"):
                monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path.parent)
        spawned = Settings()
        assert spawned.state_dir == tmp_path.resolve() / "state"
        sizes = ("state_cache_mb", "state_write_buffer_mb", "state_max_mb", "state_cleanup_s")
        assert {f: getattr(spawned, f) for f in sizes} == {f: getattr(settings, f) for f in sizes}

    def test_run_warns_once_per_unknown_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``export-worker run`` says which variables it ignores, in its log, before starting."""
        started: list[Settings] = []

        class NoWorker:
            producer_stuck = False

            def __init__(self, settings: Settings, **_: object) -> None:
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


POLICY_MAXIMA = {
    "first_poll_s": 86_400, "poll_initial_s": 86_400, "poll_multiplier": 10, "poll_max_s": 86_400, "jitter": 1,
    "retry_initial_s": 3_600, "retry_max_s": 86_400, "max_failing_s": 2_592_000, "busy_retry_s": 86_400,
    "submit_settle_s": 86_400, "link_ttl_s": 31_622_400, "retention_s": 31_622_400,
}  # fmt: skip


def load_toml(tmp_path: Path, extra: str) -> ConnectionsFile:
    path = tmp_path / "connections.toml"
    path.write_text(
        f"""
[connections.itron]
vendor = "itron"
base_url = "https://example.invalid"
client_id = "c"
client_secret = {{ value = "top-secret-value" }}
{extra}
"""
    )
    return ConnectionsFile.load(path)


class TestConnectionBounds:
    """Every timing and limit of a connection is finite and within sensible bounds."""

    def test_the_bounds_cover_every_policy_field(self) -> None:
        assert set(POLICY_MAXIMA) == set(PolicyConfig.model_fields)

    @pytest.mark.parametrize("name", sorted(POLICY_MAXIMA))
    @pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1.0", "above"])
    def test_policy_values_out_of_bounds_are_refused_naming_the_field(
        self, tmp_path: Path, name: str, value: str
    ) -> None:
        text = str(POLICY_MAXIMA[name] * 1.5) if value == "above" else value
        with pytest.raises(ConfigError, match=rf"connections\.itron\.policy\.{name}"):
            load_toml(tmp_path, f"policy = {{ {name} = {text} }}")

    @pytest.mark.parametrize("name", sorted(POLICY_MAXIMA))
    def test_policy_maxima_are_accepted(self, tmp_path: Path, name: str) -> None:
        conns = load_toml(tmp_path, f"policy = {{ {name} = {POLICY_MAXIMA[name]} }}").connections
        assert conns["itron"].policy.overrides() == {name: POLICY_MAXIMA[name]}

    @pytest.mark.parametrize("name", ["poll_initial_s", "poll_max_s", "retry_initial_s", "retry_max_s",
                                      "busy_retry_s", "link_ttl_s", "retention_s"])  # fmt: skip
    def test_durations_that_must_pass_are_refused_at_zero(self, tmp_path: Path, name: str) -> None:
        with pytest.raises(ConfigError, match=rf"policy\.{name}.*greater than 0"):
            load_toml(tmp_path, f"policy = {{ {name} = 0 }}")

    def test_a_poll_multiplier_below_one_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="poll_multiplier"):
            load_toml(tmp_path, "policy = { poll_multiplier = 0.5 }")

    @pytest.mark.parametrize(
        ("line", "field"),
        [
            ("max_concurrency = 0", "max_concurrency"),
            ("max_concurrency = 100000", "max_concurrency"),
            ("rate_per_s = inf", "rate_per_s"),
            ("rate_per_s = nan", "rate_per_s"),
            ("rate_per_s = 0", "rate_per_s"),
            ("rate_per_s = 1e9", "rate_per_s"),
            ("timeout_s = nan", "timeout_s"),
            ("timeout_s = -5", "timeout_s"),
            ("timeout_s = 86400", "timeout_s"),
        ],
    )
    def test_connection_limits_out_of_bounds_are_refused(self, tmp_path: Path, line: str, field: str) -> None:
        with pytest.raises(ConfigError, match=rf"connections\.itron\.{field}"):
            load_toml(tmp_path, line)

    def test_an_invalid_file_never_shows_a_secret(self, tmp_path: Path) -> None:
        path = tmp_path / "c.toml"
        path.write_text('[connections.x]\nvendor = "itron"\nbase_url = "http://x"\nclient_secret = "plain-s3cr3t"\n')
        with pytest.raises(ConfigError) as err:
            ConnectionsFile.load(path)
        assert "connections.x.client_secret" in str(err.value) and "plain-s3cr3t" not in str(err.value)


class TestSettingsBounds:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("http_port", 70_000),
            ("http_port", -2),
            ("commit_interval_ms", 10**9),
            ("consume_batch", 10**7),
            ("max_request_bytes", 1_048_576),
            ("transaction_timeout_ms", 3_600_000),
            ("session_timeout_ms", 10**8),
            ("shutdown_grace_s", float("inf")),
            ("shutdown_grace_s", float("nan")),
            ("revoke_drain_s", 10**6),
            ("revoke_drain_s", -1),
            ("stall_timeout_s", float("inf")),
            ("max_retry_after_s", float("inf")),
            ("max_retry_after_s", float("nan")),
            ("max_retry_after_s", 0),
            ("max_retry_after_s", 86_401),
            ("max_answer_bytes", 256 * 1024 * 1024 + 1),
            ("max_answer_bytes", 0),
            ("log_level", "verbose"),
        ],
    )
    def test_out_of_bounds_settings_are_refused(self, name: str, value: object) -> None:
        with pytest.raises(ValueError, match=name):
            Settings(**{name: value})  # type: ignore[arg-type]

    @pytest.mark.parametrize(("name", "value"), [("partitions", 100_000), ("replication_factor", 1000)])
    def test_out_of_bounds_topic_settings_are_refused(self, name: str, value: int) -> None:
        with pytest.raises(ValueError, match=name):
            TopicSettings(**{name: value})  # type: ignore[arg-type]

    def test_answer_limits_default_and_bounds(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """8 MiB answers and 600 s Retry-After by default; the bounds are accepted; the
        environment names are the documented ones."""
        assert (Settings().max_answer_bytes, Settings().max_retry_after_s) == (8_388_608, 600.0)
        Settings(max_answer_bytes=256 * 1024 * 1024, max_retry_after_s=86_400)
        Settings(max_retry_after_s=1)
        monkeypatch.setenv("EXPORT_WORKER_MAX_ANSWER_BYTES", "1048576")
        monkeypatch.setenv("EXPORT_WORKER_MAX_RETRY_AFTER_S", "30")
        assert (Settings().max_answer_bytes, Settings().max_retry_after_s) == (1_048_576, 30.0)

    def test_log_level_is_read_in_any_case(self) -> None:
        assert Settings(log_level="WARNING").log_level == "warning"

    def test_an_invalid_environment_value_is_one_clear_line(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("EXPORT_WORKER_HTTP_PORT", "99999")
        result = CliRunner().invoke(app, ["run"])
        assert result.exit_code != 0
        assert "http_port" in result.output and "less than or equal to 65535" in result.output


class TestConnectionShapes:
    """Connection values that become URLs and headers are checked when the file is loaded."""

    @pytest.mark.parametrize(
        ("field", "value", "words"),
        [
            ("base_url", "k8s.itrontotal.com", "absolute http:// or https:// URL with a host"),
            ("base_url", "ftp://k8s.itrontotal.com", "absolute http:// or https:// URL with a host"),
            ("base_url", "https://", "absolute http:// or https:// URL with a host"),
            ("base_url", "https://user:pw-hunter2@k8s.itrontotal.com", "must not carry credentials"),
            ("base_url", "https://k8s.itrontotal.com/x?y=1", "must not have a query or fragment"),
            ("base_url", "https://k8s.itrontotal.com/#x", "must not have a query or fragment"),
            ("base_url", "https://k8s.itrontotal.com:70000", "is not a valid URL"),
            ("base_url", "https://k8s.itron total.com", "without whitespace"),
            ("auth_url", "identity.itrontotal.com", "absolute http:// or https:// URL with a host"),
            ("subscription_id", "x/../../connect/token#", "must be a UUID"),
            ("subscriber_id", "d\r\nX-Injected: 1", "printable characters"),
            ("facility", "", "printable characters"),
        ],
    )
    def test_a_misshapen_value_is_refused_naming_the_field_not_the_value(
        self, tmp_path: Path, field: str, value: str, words: str
    ) -> None:
        path = tmp_path / "c.json"
        conn = {"vendor": "itron", "base_url": "https://k8s.itrontotal.com", field: value}
        path.write_text(json.dumps({"connections": {"itron": conn}}))
        with pytest.raises(ConfigError, match=re.escape(words)) as caught:
            ConnectionsFile.load(path)
        assert f"connections.itron.{field}" in str(caught.value)
        assert "hunter2" not in str(caught.value)

    @pytest.mark.parametrize(
        "url", ["https://k8s.itrontotal.com", "http://127.0.0.1:8080/base/", "https://acme.unicommerce.com"]
    )
    def test_ordinary_base_urls_are_accepted(self, url: str) -> None:
        subscription = "7F7F2D8E-6C38-4B8E-9A53-6A1F1C7B2E10"
        conn = ConnectionConfig(vendor="itron", base_url=url, auth_url=url, subscription_id=subscription)
        assert conn.base_url == url
