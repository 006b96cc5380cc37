"""Itron DPSS batch requests (seeds 000 and 001).

Submit ``POST /dpss/api/v1/subscriptions/{subscriptionId}/batch-request``, poll
``GET .../batch-request/{jobId}`` until ``Success`` or ``Failed``; the result is a
time-limited blob link to a ``.zip`` whose expiry is the ``se=`` query parameter.
Auth: OAuth2 client credentials at ``{identity}/connect/token``, scope
``DPSSSubscriberApi``. Every call carries ``Itron-CorrelationId`` (one per export
request) and ``DataSubscriberId``. No cancel, no idempotency key, no job search: a
lost submit answer cannot be reconciled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import unquote_plus, urlsplit

from worker.config import UUID_TEXT, ConnectionConfig
from worker.engine.model import ErrorInfo, FileInfo, PollAnswered, ReconcileAnswered, Status, SubmitAnswered
from worker.errors import ConfigError, InvalidRequest, MalformedAnswer
from worker.redaction import excerpt
from worker.vendors.base import JobSpec, VendorAdapter, job_id_of, kept, map_status, segment
from worker.vendors.http import Answer, BearerToken, VendorHttp, token_answer

STATUSES: dict[str, Status] = {
    "new": Status.QUEUED,
    "started": Status.RUNNING,
    "running": Status.RUNNING,
    "success": Status.SUCCEEDED,
    "failed": Status.FAILED,
}
LINK_FIELDS = ("downloadurl", "downloaduri")
DATE_TOKENS = ("StartEventDate", "EndEventDate", "StatusDatetime", "StartReceivedDateTime", "EndReceivedDateTime")
AVAILABILITY_MONTHS = 13
_CORRELATION_NS = uuid.UUID("5b0d9a5e-4d0e-4c53-9a64-6e1f4f0c2a11")


def correlation_id(spec: JobSpec) -> str:
    """One stable UUID per export request, so Itron's logs join ours across retries."""
    given = spec.correlation_id
    if given is not None and len(given) > _CACHED_GIVEN_ID_CHARS:
        return _derived_correlation_id(given, spec.request_id)  # not kept past its job
    return _remembered_correlation_id(given, spec.request_id)


def _derived_correlation_id(given: str | None, request_id: str) -> str:
    if given:
        try:
            return str(uuid.UUID(given))
        except ValueError:
            pass
    return name_based_uuid(request_id)


_CORRELATION_NS_BYTES = _CORRELATION_NS.bytes


def name_based_uuid(name: str) -> str:
    """``str(uuid.uuid5(_CORRELATION_NS, name))`` without the UUID object in between
    (1.2 µs against 3.5: it is worked out for every call of a job not remembered)."""
    digest = bytearray(hashlib.sha1(_CORRELATION_NS_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Every call of a job sends the same id: remembered for the jobs called most recently
# (a submit's poll follows it closely) instead of hashed and formatted again (~4 us).
# A request's correlation_id is bounded only by the request's size, so only ids of a
# UUID's length are remembered: 1,024 entries of at most 64 + 256 characters (the
# request id's bound), under ~1.3 MiB, whatever producers send.
_CACHED_GIVEN_ID_CHARS = 64
_remembered_correlation_id = lru_cache(maxsize=1024)(_derived_correlation_id)


def _months_back(now: dt.date, months: int) -> dt.date:
    year, month = divmod(now.year * 12 + now.month - 1 - months, 12)
    day = min(now.day, 28)
    return dt.date(year, month + 1, day)


def _parse_day(value: str) -> dt.date:
    text = value.strip()
    for candidate in (text, text[:10]):
        try:
            return dt.date.fromisoformat(candidate)
        except ValueError:
            continue
    raise ValueError(value)


def validate(job: dict[str, Any], now_ms: int, conn: ConnectionConfig) -> None:
    """Refuse what Itron would refuse, before any call: no filter, dates beyond the
    13 months of data availability, no subscription or one that is not a UUID."""
    subscription = job.get("subscription_id")
    if subscription is not None and not UUID_TEXT.fullmatch(str(subscription)):
        # Seed 000's parameter table: a UUID. It goes into the URL path: anything else could
        # point the call, with its token and DataSubscriberId, at another path.
        raise InvalidRequest(
            "invalid_request", f"subscription_id {excerpt(repr(subscription))} is not a UUID (8-4-4-4-12 hex digits)"
        )
    if not (subscription or conn.subscription_id):
        raise InvalidRequest("invalid_request", "no subscription_id on the request or its connection")
    tokens = job.get("tokens") or {}
    if not any(str(v).strip() for v in tokens.values()):
        raise InvalidRequest("invalid_request", "an Itron batch request needs at least one filter token")
    today = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).date()
    oldest = _months_back(today, AVAILABILITY_MONTHS)
    for name in DATE_TOKENS:
        value = str(tokens.get(name) or "").strip()
        if not value:
            continue
        try:
            day = _parse_day(value)
        except ValueError:
            raise InvalidRequest("invalid_request", f"token {name}={value!r} is not a date") from None
        if day < oldest:
            raise InvalidRequest(
                "out_of_range",
                f"token {name}={value} is older than Itron's {AVAILABILITY_MONTHS} months of data "
                f"(oldest {oldest.isoformat()})",
            )


def link_of(data: dict[str, Any]) -> str | None:
    """``downloadUrl`` in the JSON example, ``DownloadUri`` in the field table: any case."""
    for key, value in data.items():
        if key.lower() in LINK_FIELDS and isinstance(value, str) and value.strip():
            return value.strip()
    return None


def link_expiry_ms(url: str) -> int | None:
    """The blob SAS expiry ``se=`` (ISO 8601, UTC) as epoch milliseconds."""
    value = query_value(urlsplit(url).query, "se")
    if value is None:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def query_value(query: str, name: str) -> str | None:
    """The first non-empty value of ``name`` in a query, as ``parse_qs(query)[name][0]``
    reads it, without decoding every other field of a signed link (~5 us of a poll)."""
    for field in query.split("&"):
        key, equals, value = field.partition("=")
        if equals and value and unquote_plus(key) == name:
            return unquote_plus(value)
    return None


class ItronAdapter(VendorAdapter):
    vendor: ClassVar[str] = "itron"
    can_reconcile: ClassVar[bool] = False
    # Every operation name this adapter reports to metrics (a fixed set of labels).
    operations: ClassVar[frozenset[str]] = frozenset({"token", "submit", "poll"})
    # What poll reads of the job: the subscription in its path (_path), and the file
    # type that names the result when a success answer has no fileFormat (read_poll).
    POLL_FIELDS: ClassVar[tuple[str, ...]] = ("subscription_id", "filetype")

    def __init__(self, conn: ConnectionConfig, http: VendorHttp) -> None:
        if conn.client_id is None or conn.client_secret is None:
            raise ConfigError(f"connection {http.connection}: itron needs client_id and client_secret")
        if conn.subscriber_id is None:
            raise ConfigError(f"connection {http.connection}: itron needs subscriber_id (DataSubscriberId)")
        self.conn = conn
        self.http = http
        self._client_id = conn.client_id
        self._secret = conn.client_secret.resolve()
        self._identity = (conn.auth_url or conn.base_url).rstrip("/")
        self.token = BearerToken(self._fetch_token)
        http.auth = self.token

    async def _fetch_token(self, http: VendorHttp, _refresh: str | None) -> tuple[str, float, str | None]:
        answer = await http.call(
            "POST",
            f"{self._identity}/connect/token",
            operation="token",
            authenticated=False,
            data={
                "grant_type": "client_credentials",
                "client_id": self._client_id,
                "client_secret": self._secret.get_secret_value(),
                "scope": self.conn.scope or "DPSSSubscriberApi",
            },
        )
        return token_answer(answer)

    @staticmethod
    def poll_view(job: dict[str, Any]) -> dict[str, Any]:
        return kept(job, ItronAdapter.POLL_FIELDS)

    def _path(self, spec: JobSpec, job_id: str | None = None) -> str:
        subscription = str(spec.job.get("subscription_id") or self.conn.subscription_id)
        path = f"/dpss/api/v1/subscriptions/{segment(subscription, 'subscription_id')}/batch-request"
        return path if job_id is None else f"{path}/{segment(job_id, 'job id')}"

    def _headers(self, spec: JobSpec) -> dict[str, str]:
        assert self.conn.subscriber_id is not None
        return {"Itron-CorrelationId": correlation_id(spec), "DataSubscriberId": self.conn.subscriber_id}

    async def submit(self, spec: JobSpec) -> SubmitAnswered:
        body = {
            "filetype": spec.job["filetype"],
            "tokens": dict(spec.job.get("tokens") or {}),
            "isOhsRequest": bool(spec.job.get("is_ohs_request", False)),
        }
        answer = await self.http.call(
            "POST", self._path(spec), operation="submit", json_body=body, headers=self._headers(spec)
        )
        try:
            data = answer.json_object()
        except MalformedAnswer as exc:
            exc.outcome_unknown = True  # a 2xx to the submit that cannot be read: a job may exist
            raise
        job_id = job_id_of(
            data.get("jobId") or data.get("JobId"), operation="submit", body=answer.body, outcome_unknown=True
        )
        raw = str(data.get("status") or "New")
        return SubmitAnswered(vendor_job_id=job_id, vendor_status=raw, status=map_status(STATUSES, raw))

    async def poll(self, spec: JobSpec, vendor_job_id: str) -> PollAnswered:
        answer = await self.http.call(
            "GET", self._path(spec, vendor_job_id), operation="poll", headers=self._headers(spec)
        )
        return self.read_poll(answer, spec)

    def read_poll(self, answer: Answer, spec: JobSpec) -> PollAnswered:
        data = answer.json_object()
        raw = data.get("status") or data.get("Status")
        if not isinstance(raw, str) or not raw:
            raise MalformedAnswer(f"poll answer without status: {excerpt(answer.body)}")
        status = map_status(STATUSES, raw)
        if status is Status.SUCCEEDED:
            url = link_of(data)
            file = None
            if url:
                inner = str(data.get("fileFormat") or spec.job.get("filetype") or "").lower()
                file = FileInfo(url=url, format=f"{inner}.zip" if inner else "zip", expires_at_ms=link_expiry_ms(url))
            return PollAnswered(vendor_status=raw, status=status, file=file)
        if status is Status.FAILED:
            message = str(data.get("message") or data.get("error") or "Itron reports the batch request Failed")
            return PollAnswered(
                vendor_status=raw, status=status, error=ErrorInfo("vendor_failed", excerpt(message), False)
            )
        return PollAnswered(vendor_status=raw, status=status)

    async def reconcile(self, spec: JobSpec) -> ReconcileAnswered:
        return ReconcileAnswered(known=False)
