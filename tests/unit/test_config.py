"""Settings and connection files: secrets come from env or files and never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config import ConnectionsFile, KafkaSettings, SecretRef, Settings
from worker.errors import ConfigError


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
