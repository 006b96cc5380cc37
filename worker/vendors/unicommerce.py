"""Unicommerce (Uniware) export jobs (seed 004).

Create ``POST /services/rest/v1/export/job/create`` -> ``jobCode``; poll
``POST /services/rest/v1/export/job/status`` until a terminal status; the result is a CSV
link (``filePath``). Auth: ``GET /oauth/token`` with the password grant and the fixed
client id ``my-trusted-client``, renewed with the refresh-token grant (the password grant
again when the refresh is refused); calls carry ``Authorization: bearer <token>``
(lower case, as documented) and ``Facility: <facility code>``.

What the public reference says, and what is assumed:

* ``exportFilters`` items are ``{"id", "text", "selectedValues": [...], "selectedValue",
  "dateTime", "dateRange": {"start", "end", "textRange"}, "checked"}`` with ISO 8601
  timestamps (``2020-07-17T09:29:09.138Z``); our ``UnicommerceFilter`` maps to ``id``,
  ``selectedValues``, ``text`` and ``dateRange`` (epoch ms -> ISO, UTC, milliseconds).
  ``frequency`` must be ``ONETIME`` for a one-off export; ``exportColums`` keeps the
  API's spelling.
* Errors come as HTTP 200 with ``"successful": false`` and ``errors[]`` (``description``
  is the human text, ``message`` often a code: both are reported). They are read as
  ``VendorRejected`` (the request is wrong, or the job code unknown: retrying the same
  call cannot help), except that words saying "try again later" make them
  ``VendorUnavailable`` and, on create, words saying another export is already running
  make them ``VendorBusy``. An answer without a boolean ``successful`` is
  ``MalformedAnswer``: a 200 is never read as success on its own.
* The docs say ``SUCCESSFUL``; real clients see ``COMPLETE``: both succeed (and
  ``COMPLETED``). ``FAILED`` and ``CANCELLED`` end the job. Any other value is not
  documented and keeps the job running; it is logged once per job.
* No idempotency key and no job search: a lost create answer cannot be reconciled.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from typing import Any, ClassVar
from urllib.parse import urljoin

import structlog

from worker.config import ConnectionConfig
from worker.engine.model import ErrorInfo, FileInfo, PollAnswered, ReconcileAnswered, Status, SubmitAnswered
from worker.errors import (
    AuthFailed,
    ConfigError,
    InvalidRequest,
    MalformedAnswer,
    VendorBusy,
    VendorRejected,
    VendorUnavailable,
)
from worker.redaction import excerpt
from worker.vendors.base import JobSpec, VendorAdapter, kept, map_status
from worker.vendors.http import Answer, BearerToken, VendorHttp, token_answer

log = structlog.get_logger(__name__)

TOKEN = "/oauth/token"
CREATE = "/services/rest/v1/export/job/create"
STATUS = "/services/rest/v1/export/job/status"
CLIENT_ID = "my-trusted-client"  # a fixed literal in Uniware's OAuth docs, not a credential
STATUSES: dict[str, Status] = {
    "successful": Status.SUCCEEDED,  # the docs
    "complete": Status.SUCCEEDED,  # what real clients see
    "completed": Status.SUCCEEDED,
    "failed": Status.FAILED,
    "cancelled": Status.CANCELLED,
    "canceled": Status.CANCELLED,
}
# Words that make a successful=false answer retriable. Kept narrow on purpose: a busy
# answer is re-queued without an error budget, so a permanent refusal misread as busy
# would wait forever.
TRANSIENT_WORDS = ("try again", "try after", "retry later", "please retry", "temporarily", "timed out")
BUSY_WORDS = ("already running", "already in progress", "is in progress")
_SEEN_LIMIT = 10_000


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds -> ``2020-07-17T09:29:09.138Z`` (Uniware's documented form)."""
    when = dt.datetime.fromtimestamp(epoch_ms / 1000, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def export_filter(item: dict[str, Any]) -> dict[str, Any]:
    """Our ``UnicommerceFilter`` -> one ``exportFilters`` entry (absent parts left out)."""
    out: dict[str, Any] = {"id": item["id"]}
    if item.get("selected_values"):
        out["selectedValues"] = list(item["selected_values"])
    if item.get("text") is not None:
        out["text"] = item["text"]
    date_range = item.get("date_range")
    if date_range:
        out["dateRange"] = {"start": iso_ms(int(date_range["start"])), "end": iso_ms(int(date_range["end"]))}
    return out


MAX_FACILITY_CHARS = 256


def facility_of(job: dict[str, Any], conn: ConnectionConfig) -> str | None:
    """The request's facility code, else the connection's."""
    value = str(job.get("facility") or conn.facility or "").strip()
    return value or None


def validate(job: dict[str, Any], now_ms: int, conn: ConnectionConfig) -> None:
    """Refuse what Uniware would refuse, before any call: no export type, no columns (the
    create call requires them), a filter without an id or a value, a reversed date range,
    no facility."""
    if not str(job.get("export_job_type_name") or "").strip():
        raise InvalidRequest("invalid_request", "export_job_type_name is empty")
    columns = job.get("export_columns") or []
    if not columns or not all(isinstance(c, str) and c.strip() for c in columns):
        raise InvalidRequest("invalid_request", "export_columns needs at least one non-empty column name")
    for i, item in enumerate(job.get("export_filters") or []):
        if not str(item.get("id") or "").strip():
            raise InvalidRequest("invalid_request", f"export_filters[{i}].id is empty")
        date_range = item.get("date_range")
        if not (item.get("selected_values") or item.get("text") is not None or date_range):
            raise InvalidRequest(
                "invalid_request", f"export_filters[{i}] ({item['id']}) has no selected_values, text or date_range"
            )
        if date_range and int(date_range["start"]) > int(date_range["end"]):
            raise InvalidRequest("invalid_request", f"export_filters[{i}] ({item['id']}) ends before it starts")
    facility = facility_of(job, conn)
    if facility is None:
        raise InvalidRequest("invalid_request", "no facility on the request or its connection (Facility header)")
    if len(facility) > MAX_FACILITY_CHARS or not facility.isprintable():
        # It is sent as a header: a line break would add headers of the request's choosing.
        raise InvalidRequest(
            "invalid_request", f"facility must be at most {MAX_FACILITY_CHARS} printable characters (Facility header)"
        )


def vendor_messages(data: dict[str, Any]) -> list[str]:
    """Uniware's words: each error's field, description and message, then ``message``."""
    words: list[str] = []
    errors = data.get("errors")
    for item in errors if isinstance(errors, list) else []:
        if isinstance(item, str) and item.strip():
            words.append(item.strip())
            continue
        if not isinstance(item, dict):
            continue
        parts: list[str] = []
        for key in ("description", "message"):
            text = str(item.get(key) or "").strip()
            if text and text not in parts:
                parts.append(text)
        field = str(item.get("fieldName") or "").strip()
        if parts:
            words.append((f"{field}: " if field else "") + " | ".join(parts))
    message = str(data.get("message") or "").strip()
    if message and message not in words:
        words.append(message)
    return words


def describe(answer: Answer) -> str:
    """Uniware's words in a refused answer (for VendorHttp's error messages)."""
    try:
        return "; ".join(vendor_messages(answer.json_object()))
    except MalformedAnswer:
        return ""


def read_answer(answer: Answer, operation: str, *, outcome_unknown: bool = False) -> dict[str, Any]:
    """The body of a 200 whose ``successful`` is true; anything else raises."""
    try:
        data = answer.json_object()
    except MalformedAnswer as exc:
        exc.outcome_unknown = outcome_unknown
        raise
    flag = data.get("successful")
    if flag is True:
        return data
    words = vendor_messages(data)
    text = excerpt("; ".join(words)) if words else excerpt(answer.body)
    if flag is False:
        lowered = text.lower()
        if any(w in lowered for w in TRANSIENT_WORDS):
            raise VendorUnavailable(f"{operation}: Unicommerce asks to retry later: {text}", outcome_unknown=False)
        if operation == "submit" and any(w in lowered for w in BUSY_WORDS):
            raise VendorBusy(f"{operation}: Unicommerce refuses for now: {text}")
        raise VendorRejected(f"{operation}: Unicommerce refused (HTTP {answer.status}): {text}", status=answer.status)
    raise MalformedAnswer(
        f"{operation}: answer without a boolean 'successful': {excerpt(answer.body)}", outcome_unknown=outcome_unknown
    )


class UnicommerceAdapter(VendorAdapter):
    vendor: ClassVar[str] = "unicommerce"
    can_reconcile: ClassVar[bool] = False
    # Every operation name this adapter reports to metrics (a fixed set of labels).
    operations: ClassVar[frozenset[str]] = frozenset({"token", "token_refresh", "submit", "poll"})
    # What poll reads of the job: the facility of its Facility header (facility_of).
    POLL_FIELDS: ClassVar[tuple[str, ...]] = ("facility",)

    def __init__(self, conn: ConnectionConfig, http: VendorHttp) -> None:
        if conn.username is None or conn.password is None:
            raise ConfigError(f"connection {http.connection}: unicommerce needs username and password")
        self.conn = conn
        self.http = http
        self._username = conn.username
        self._password = conn.password.resolve()
        self._token_url = f"{(conn.auth_url or conn.base_url).rstrip('/')}{TOKEN}"
        self.token = BearerToken(self._fetch_token, scheme="bearer")
        http.auth = self.token
        # job codes whose undocumented status was logged already (bounded, oldest dropped)
        self._logged: OrderedDict[str, None] = OrderedDict()

    async def _fetch_token(self, http: VendorHttp, refresh: str | None) -> tuple[str, float, str | None]:
        if refresh:
            try:
                answer = await http.call(
                    "GET",
                    self._token_url,
                    operation="token_refresh",
                    authenticated=False,
                    params={"grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": refresh},
                )
                return token_answer(answer)
            except (VendorRejected, MalformedAnswer) as exc:
                # Expired (30 days) or revoked: log in again. The answer may quote the
                # refresh token, so only its status is logged.
                log.warning("unicommerce refresh token refused; using the password grant", status=exc.status)
        try:
            answer = await http.call(
                "GET",
                self._token_url,
                operation="token",
                authenticated=False,
                params={
                    "grant_type": "password",
                    "client_id": CLIENT_ID,
                    "username": self._username,
                    "password": self._password.get_secret_value(),
                },
            )
        except VendorRejected as exc:
            raise AuthFailed(f"token: Unicommerce refused the username and password (HTTP {exc.status})") from None
        return token_answer(answer)

    @staticmethod
    def poll_view(job: dict[str, Any]) -> dict[str, Any]:
        return kept(job, UnicommerceAdapter.POLL_FIELDS)

    def _headers(self, spec: JobSpec) -> dict[str, str]:
        facility = facility_of(spec.job, self.conn)
        return {"Facility": facility} if facility else {}

    async def submit(self, spec: JobSpec) -> SubmitAnswered:
        job = spec.job
        body = {
            "exportJobTypeName": job["export_job_type_name"],
            "exportColums": list(job.get("export_columns") or []),
            "exportFilters": [export_filter(f) for f in job.get("export_filters") or []],
            "frequency": "ONETIME",
        }
        answer = await self.http.call(
            "POST", CREATE, operation="submit", json_body=body, headers=self._headers(spec), describe=describe
        )
        data = read_answer(answer, "submit", outcome_unknown=True)
        code = data.get("jobCode") or data.get("exportJobCode")
        if not isinstance(code, str) or not code.strip():
            raise MalformedAnswer(f"submit: answer without jobCode: {excerpt(answer.body)}", outcome_unknown=True)
        return SubmitAnswered(vendor_job_id=code.strip(), vendor_status=None, status=Status.QUEUED)

    async def poll(self, spec: JobSpec, vendor_job_id: str) -> PollAnswered:
        answer = await self.http.call(
            "POST",
            STATUS,
            operation="poll",
            json_body={"jobCode": vendor_job_id},
            headers=self._headers(spec),
            describe=describe,
        )
        data = read_answer(answer, "poll")
        raw = data.get("status")
        if not isinstance(raw, str) or not raw.strip():
            raise MalformedAnswer(f"poll: answer without status: {excerpt(answer.body)}")
        raw = raw.strip()
        status = map_status(STATUSES, raw)
        if status is Status.SUCCEEDED:
            path = data.get("filePath")
            file = None
            if isinstance(path, str) and path.strip():
                url = urljoin(f"{self.http.base_url}/", path.strip())
                file = FileInfo(url=url, format="csv", expires_at_ms=None)
            return PollAnswered(vendor_status=raw, status=status, file=file)
        if status is Status.FAILED:
            words = vendor_messages(data)
            message = "; ".join(words) or "Unicommerce reports the export job FAILED"
            return PollAnswered(
                vendor_status=raw, status=status, error=ErrorInfo("vendor_failed", excerpt(message), False)
            )
        if status is Status.RUNNING:
            self._note_unknown(vendor_job_id, raw)
        return PollAnswered(vendor_status=raw, status=status)

    def _note_unknown(self, job_code: str, raw: str) -> None:
        """Log an undocumented status once per job: enough to notice a new value without
        a line for every poll."""
        if job_code in self._logged:
            return
        self._logged[job_code] = None
        if len(self._logged) > _SEEN_LIMIT:
            self._logged.popitem(last=False)
        log.warning(
            "unicommerce status not documented; the job stays running", vendor_status=raw, vendor_job_id=job_code
        )

    async def reconcile(self, spec: JobSpec) -> ReconcileAnswered:
        return ReconcileAnswered(known=False)
