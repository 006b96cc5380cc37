"""Typed settings. Only ``cli.py`` builds ``Settings()`` from the environment; everything
else receives settings objects (tests build them directly)."""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.budgets import BudgetMode
from worker.engine.policy import Policy, UnknownOutcome
from worker.errors import ConfigError
from worker.exclusive import JOB_KINDS
from worker.limits import (
    DEAD_LETTER_OVERHEAD,
    DEFAULT_MAX_ANSWER_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    DEFAULT_MAX_RETRY_AFTER_S,
    MAX_ANSWER_BYTES_CEILING,
    MAX_RETRY_AFTER_CEILING_S,
    MIN_ANSWER_BYTES,
)
from worker.vendor_registry import VENDORS

if TYPE_CHECKING:
    VendorName = str
else:
    # Literal["itron", "opengate", ...], built from the registry: pydantic validates it
    # (and words its errors) exactly as the spelled-out Literal it replaces.
    VendorName = Literal[VENDORS]


class SecretRef(BaseModel):
    """Where a credential comes from: an environment variable, a mounted file, or
    (for local demos only) an inline value. Resolved at start-up, never logged."""

    env: str | None = None
    file: Path | None = None
    value: SecretStr | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if sum(x is not None for x in (self.env, self.file, self.value)) != 1:
            raise ValueError("a secret needs exactly one of env, file or value")
        return self

    def resolve(self) -> SecretStr:
        if self.value is not None:
            return self.value
        if self.env is not None:
            found = os.environ.get(self.env)
            if found is None:
                raise ConfigError(f"environment variable {self.env} (a credential) is not set")
            return SecretStr(found)
        assert self.file is not None
        try:
            return SecretStr(self.file.read_text().strip())
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {self.file}: {exc.strerror}") from None


_DAY_S = 86_400.0
_YEAR_S = 366 * _DAY_S
# The smallest open-jobs limit besides 0 (none): below it, intake would pause on every batch.
MIN_MAX_OPEN_JOBS = 10


def _seconds(maximum: float, *, zero_ok: bool = False) -> Any:
    """An optional duration in seconds, at most ``maximum``; above 0 unless ``zero_ok``."""
    if zero_ok:
        return Field(None, ge=0.0, le=maximum)
    return Field(None, gt=0.0, le=maximum)


class PolicyConfig(BaseModel):
    """Timing per connection; see ``worker.engine.policy.Policy``. Every value is finite
    and bounded: a typo such as ``retention_s = -1`` or ``inf`` is refused at load."""

    model_config = ConfigDict(allow_inf_nan=False)

    first_poll_s: float | None = _seconds(_DAY_S, zero_ok=True)
    poll_initial_s: float | None = _seconds(_DAY_S)
    poll_multiplier: float | None = Field(default=None, ge=1.0, le=10.0)
    poll_max_s: float | None = _seconds(_DAY_S)
    jitter: float | None = Field(default=None, ge=0.0, le=1.0)
    retry_initial_s: float | None = _seconds(3_600.0)
    retry_max_s: float | None = _seconds(_DAY_S)
    max_failing_s: float | None = _seconds(30 * _DAY_S, zero_ok=True)
    busy_retry_s: float | None = _seconds(_DAY_S)
    submit_settle_s: float | None = _seconds(_DAY_S, zero_ok=True)
    link_ttl_s: float | None = _seconds(_YEAR_S)
    retention_s: float | None = _seconds(_YEAR_S)

    def overrides(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


# The canonical 8-4-4-4-12 form (Itron's subscription ids are UUIDs, seed 000).
UUID_TEXT = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
MAX_URL_CHARS = 2_048
MAX_HEADER_VALUE_CHARS = 256


def vendor_base_url(value: str) -> str:
    """An absolute http(s) URL with a host, and nothing a path can be appended to badly:
    no query, fragment or credentials (credentials have their own fields), no whitespace.
    Errors never quote the value: a misplaced credential would be logged."""
    if len(value) > MAX_URL_CHARS or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"must be a URL of at most {MAX_URL_CHARS} characters without whitespace")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); use the credential fields")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("must not have a query or fragment: paths are appended to it")
    return value


def header_value(value: str) -> str:
    if not value.strip() or len(value) > MAX_HEADER_VALUE_CHARS or not value.isprintable():
        raise ValueError(f"must be 1-{MAX_HEADER_VALUE_CHARS} printable characters (it is sent as a header)")
    return value


class ConnectionConfig(BaseModel):
    """One vendor account the workers may use (the ``connection`` of a request).

    Values that end up in URLs and headers are checked for shape at load: base URLs are
    absolute http(s) URLs with a host, Itron's subscription id is a UUID (it is a path
    segment), header values are printable."""

    vendor: VendorName
    base_url: str
    auth_url: str | None = Field(None, description="token endpoint base when it differs (Itron identity server)")
    client_id: str | None = None
    client_secret: SecretRef | None = None
    username: str | None = None
    password: SecretRef | None = None
    api_key: SecretRef | None = None
    scope: str | None = None
    # Itron
    subscription_id: str | None = None
    subscriber_id: str | None = None
    # Unicommerce
    facility: str | None = None
    # limits
    max_concurrency: int = Field(16, ge=1, le=1_000)
    rate_per_s: float = Field(20.0, gt=0, le=10_000, allow_inf_nan=False)
    timeout_s: float = Field(30.0, gt=0, le=600, allow_inf_nan=False, description="per vendor HTTP call")
    unknown_outcome: UnknownOutcome = UnknownOutcome.RESUBMIT
    policy: PolicyConfig = PolicyConfig()
    options: dict[str, Any] = Field(default_factory=dict, description="vendor-specific extras")
    exclusive_kinds: list[str] | None = Field(
        None,
        max_length=16,
        description="job kinds the vendor runs one at a time per account; the fleet runs them in request "
        "order (default: Elastic Path BILLING_RUN and PAYMENT_RUN; [] for none)",
    )

    @model_validator(mode="after")
    def _known_kinds(self) -> ConnectionConfig:
        if self.exclusive_kinds:
            known = JOB_KINDS.get(self.vendor, frozenset())
            unknown = sorted(set(self.exclusive_kinds) - known)
            if unknown:
                kinds = ", ".join(sorted(known)) or "none"
                raise ValueError(f"exclusive_kinds {unknown} are not {self.vendor} job kinds (known: {kinds})")
        return self

    @field_validator("base_url", "auth_url")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        return None if value is None else vendor_base_url(value)

    @field_validator("subscription_id")
    @classmethod
    def _subscription_is_uuid(cls, value: str | None) -> str | None:
        if value is not None and not UUID_TEXT.fullmatch(value):
            raise ValueError("must be a UUID (8-4-4-4-12 hex digits): it is a path segment of every Itron call")
        return value

    @field_validator("subscriber_id", "facility")
    @classmethod
    def _header_shape(cls, value: str | None) -> str | None:
        return None if value is None else header_value(value)


class ConnectionsFile(BaseModel):
    connections: dict[str, ConnectionConfig] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ConnectionsFile:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read connections file {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"connections file {path} is invalid: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"connections file {path} is invalid: {describe_invalid(exc)}") from None


def describe_invalid(exc: ValidationError) -> str:
    """Each problem as ``where: what``, without the offending values: a value in the
    wrong place may be a credential."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False, include_context=False)
    )


class TopicSettings(BaseModel):
    requests: str = "export.requests"
    status: str = "export.status"
    files: str = "export.files"
    jobs: str = "export.jobs"
    dlq: str = "export.requests.dlq"
    control: str = "export.control"
    partitions: int = Field(6, ge=1, le=10_000, description="for topics the worker creates")
    replication_factor: int = Field(1, ge=1, le=32)
    create: bool = True

    def prefixed(self, prefix: str) -> TopicSettings:
        return self.model_copy(
            update={
                name: f"{prefix}{getattr(self, name)}"
                for name in ("requests", "status", "files", "jobs", "dlq", "control")
            }
        )


class KafkaSettings(BaseModel):
    """Client security and tuning, rendered to a librdkafka dict by ``to_librdkafka``."""

    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = Field(None, description="read the SASL password from this (mounted) file")
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    extra: dict[str, str] = Field(default_factory=dict, description="any other librdkafka property")


def _default_instance() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXPORT_WORKER_", env_nested_delimiter="__", extra="ignore")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices("EXPORT_WORKER_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP", "kafka_bootstrap"),
    )
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    group_id: str = "export-worker"
    instance_id: str = Field(
        default_factory=_default_instance, description="stable per worker; names its transactional.id"
    )
    schema_registry_url: str | None = None
    schema_registry_basic_auth: SecretStr | None = Field(None, description="user:password for the registry")
    connections_file: Path | None = None
    console_token: SecretStr | None = Field(
        None, description="lets signed-in operators act in `export-worker console`; unset: read-only"
    )
    result_store_url: str = "file://./export-results"
    http_host: str = "0.0.0.0"
    http_port: int = Field(
        8080, ge=-1, le=65_535, description="side port for /healthz /readyz /metrics; 0 picks a free one, -1 disables"
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    commit_interval_ms: int = Field(100, ge=1, le=60_000)
    consume_batch: int = Field(500, ge=1, le=10_000)
    # Kept well under the broker's 1 MB record limit: a request's job travels inside its state record.
    max_request_bytes: int = Field(262_144, ge=1024, le=900_000)
    max_record_bytes: int = Field(
        DEFAULT_MAX_RECORD_BYTES,
        ge=65_536,
        le=1_000_000,
        description="largest record the worker writes; a request whose state record could exceed it is rejected",
    )
    max_answer_bytes: int = Field(
        DEFAULT_MAX_ANSWER_BYTES,
        ge=MIN_ANSWER_BYTES,
        le=MAX_ANSWER_BYTES_CEILING,
        description="largest vendor answer body read; a larger one is a retriable answer_too_large error",
    )
    max_retry_after_s: float = Field(
        DEFAULT_MAX_RETRY_AFTER_S,
        ge=1.0,
        le=MAX_RETRY_AFTER_CEILING_S,
        allow_inf_nan=False,
        description="longest vendor Retry-After honoured; longer ones are cut to this",
    )
    # At most the broker's default transaction.max.timeout.ms, above which it refuses the producer.
    transaction_timeout_ms: int = Field(15_000, ge=1000, le=900_000)
    # At most the broker's default group.max.session.timeout.ms.
    session_timeout_ms: int = Field(10_000, ge=1000, le=1_800_000)
    shutdown_grace_s: float = Field(25.0, gt=0, le=3_600, allow_inf_nan=False)
    # Within librdkafka's max.poll.interval.ms (300 s): the drain runs inside the rebalance.
    revoke_drain_s: float = Field(10.0, ge=0, le=300, allow_inf_nan=False)
    stall_timeout_s: float = Field(
        120.0, gt=0, le=86_400, allow_inf_nan=False, description="/healthz fails when the loop is stuck this long"
    )
    max_open_jobs: int = Field(
        100_000,
        ge=0,
        le=100_000_000,
        description="open jobs at which the worker stops reading new requests until they drain; 0: no limit",
    )
    intake_low_water: float = Field(
        0.9,
        ge=0.1,
        le=0.99,
        allow_inf_nan=False,
        description="reading resumes when open jobs fall to this fraction of max_open_jobs",
    )
    state_dir: Path = Field(Path("./state"), description="on-disk stores of owned export.jobs partitions")
    state_cache_mb: int = Field(
        64, ge=8, le=65_536, description="one block cache for every store of the process; holds the write buffers too"
    )
    state_write_buffer_mb: int = Field(
        16, ge=4, le=16_384, description="memtables of every store of the process together, charged to the cache"
    )
    state_max_mb: int = Field(
        2048, ge=16, le=1_048_576, description="expected size of the state dir; a warning is logged above 80 %"
    )
    state_cleanup_s: float = Field(
        600.0,
        ge=0,
        le=7 * _DAY_S,
        allow_inf_nan=False,
        description="a store of a partition no longer owned is removed once unused this long",
    )
    budget_mode: BudgetMode = Field(
        BudgetMode.FLEET,
        description="fleet: a connection's rate_per_s and max_concurrency are the whole fleet's, shared by "
        "ownership of export.requests; process: every process may use them in full",
    )
    memory_trim_s: float = Field(
        30.0,
        ge=0,
        le=3_600,
        allow_inf_nan=False,
        description="freed heap memory is given back to the OS this often (glibc); 0: never",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("max_open_jobs")
    @classmethod
    def _a_usable_limit(cls, value: int) -> int:
        # Below a few jobs, one consumed batch overshoots the limit many times over.
        if 0 < value < MIN_MAX_OPEN_JOBS:
            raise ValueError(f"must be 0 (no limit) or at least {MIN_MAX_OPEN_JOBS}")
        return value

    @model_validator(mode="after")
    def _dead_letters_fit(self) -> Settings:
        # The dead letter of any request carries its value (up to max_request_bytes).
        if self.max_request_bytes + DEAD_LETTER_OVERHEAD > self.max_record_bytes:
            raise ValueError(
                f"max_request_bytes ({self.max_request_bytes}) plus a dead letter's {DEAD_LETTER_OVERHEAD} bytes "
                f"of key, headers and reason must fit in max_record_bytes ({self.max_record_bytes})"
            )
        return self

    @model_validator(mode="after")
    def _reads_fit_beside_writes(self) -> Settings:
        # The write buffers are charged to the block cache: a cache no larger than them
        # leaves no room for reads (measured: the restore fold runs 2x slower).
        if self.state_write_buffer_mb * 2 > self.state_cache_mb:
            raise ValueError(
                f"state_cache_mb ({self.state_cache_mb}) must be at least twice state_write_buffer_mb "
                f"({self.state_write_buffer_mb}): the write buffers are charged to the cache"
            )
        return self

    def librdkafka(self) -> dict[str, Any]:
        return to_librdkafka(self.kafka_bootstrap, self.kafka)


ENV_PREFIX = "EXPORT_WORKER_"
# EXPORT_WORKER_* variables the project reads outside ``Settings`` (embedded broker, tests).
OTHER_ENV_VARS = frozenset({"EXPORT_WORKER_CACHE_DIR", "EXPORT_WORKER_KAFKA_VERSION", "EXPORT_WORKER_TEST_LOG_LEVEL"})


def unknown_env_vars(environ: Mapping[str, str]) -> list[str]:
    """``EXPORT_WORKER_*`` variables that name no setting, sorted.

    ``Settings`` ignores names it does not know (``extra="ignore"``), so a mistyped
    variable silently leaves the default in place. Names are matched as
    pydantic-settings reads them: case-insensitively, nested with ``__`` into the
    nested models (any key below a mapping setting such as ``KAFKA__EXTRA`` counts).
    """
    return sorted(name for name in environ if _names_no_setting(name))


def _names_no_setting(name: str) -> bool:
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX) or upper in OTHER_ENV_VARS:
        return False
    head, *nested = upper.split("__")
    annotation = _top_level_env_names().get(head)
    if annotation is None:
        return True
    for part in nested:
        inner = _settings_inside(annotation)
        if inner is dict:
            return False  # keys of a mapping are the user's own
        if inner is None:
            return True  # a plain value has no sub-settings
        field = inner.model_fields.get(part.lower())
        if field is None:
            return True
        annotation = field.annotation
    return False


def _top_level_env_names() -> dict[str, Any]:
    """Environment name (upper case) -> annotation of the setting it sets."""
    names: dict[str, Any] = {}
    for field_name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            choices = [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [ENV_PREFIX + field_name]
        for choice in choices:
            names[choice.upper()] = info.annotation
    return names


def _settings_inside(annotation: Any) -> type[BaseModel] | type[dict[Any, Any]] | None:
    """The model (or ``dict`` for a mapping) a ``__`` name may reach into, if any."""
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = _settings_inside(arg)
            if found is not None:
                return found
        return None
    if get_origin(annotation) in (dict, Mapping) or annotation is dict:
        return dict
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def to_librdkafka(bootstrap: str, kafka: KafkaSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap}
    mapping = {
        "security.protocol": kafka.security_protocol,
        "sasl.mechanism": kafka.sasl_mechanism,
        "sasl.username": kafka.sasl_username,
        "ssl.ca.location": kafka.ssl_ca_location,
        "ssl.certificate.location": kafka.ssl_certificate_location,
        "ssl.key.location": kafka.ssl_key_location,
    }
    conf.update({k: v for k, v in mapping.items() if v is not None})
    if kafka.sasl_password is not None:
        conf["sasl.password"] = kafka.sasl_password.get_secret_value()
    elif kafka.sasl_password_file is not None:
        conf["sasl.password"] = SecretRef(file=kafka.sasl_password_file).resolve().get_secret_value()
    conf.update(kafka.extra)
    return conf


def policy_for(conn: ConnectionConfig, *, can_reconcile: bool, can_cancel: bool, defaults: Policy) -> Policy:
    values = {
        **{k: getattr(defaults, k) for k in defaults.__slots__},  # type: ignore[attr-defined]
        **conn.policy.overrides(),
        "can_reconcile": can_reconcile,
        "can_cancel": can_cancel,
        "unknown_outcome": conn.unknown_outcome,
    }
    return Policy(**values)
