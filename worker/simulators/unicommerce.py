"""Unicommerce (Uniware) export simulator: OAuth password and refresh-token grants,
export job create and status (undocumented in-progress values, then COMPLETE or
SUCCESSFUL, FAILED or CANCELLED), and the CSV behind ``filePath``.

Quirks reproduced:
  * errors are HTTP 200 with ``"successful": false`` and ``errors[]`` whose
    ``description`` is the human text and ``message`` a code (bad bodies, unknown export
    types or columns, unknown filter fields, a missing ``frequency``, unknown job codes);
  * an unknown ``Facility`` header answers HTTP 403 (a display name instead of a code);
  * jobs report ``COMPLETE`` (odd job numbers) or ``SUCCESSFUL`` (even ones) when done,
    and ``SCHEDULED`` / ``RUNNING`` while in progress (neither documented);
  * access tokens expire (``Timing.token_ttl_s``); refresh tokens last 30 days and the
    refresh answer quotes a refused refresh token, as Spring OAuth does;
  * the CSV link expires ``Timing.link_ttl_s`` after the job finished (S3-style 403).

Control routes besides the shared ones:
  POST /_sim/cancel/{job_code}        the job ends CANCELLED
  POST /_sim/revoke-refresh-tokens    every refresh token is refused from now on
  POST /_sim/answer-next              serve the next API call with a raw answer
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import secrets
import time
from typing import Any

from aiohttp import web

from worker.simulators.base import SimJob, Simulator, Timing
from worker.simulators.faults import FaultPlan, drop_connection

API = "/services/rest/"
CLIENT_ID = "my-trusted-client"
IN_PROGRESS = ("SCHEDULED", "RUNNING")
EXPORT_TYPES: dict[str, tuple[str, ...]] = {
    "Sale Orders": (
        "saleOrderCode",
        "displayOrderCode",
        "channel",
        "status",
        "created",
        "updated",
        "itemSkuCode",
        "sellingPrice",
        "shippingAddressCity",
    ),
    "Item Master": ("skuCode", "itemName", "categoryCode", "type", "skuType", "MRP", "enabled", "updated"),
    "Inventory Snapshot": ("facility", "itemTypeName", "itemtypeSku", "inventory", "openSale", "badInventory"),
}
FILTER_FIELDS = frozenset({"id", "text", "selectedValues", "selectedValue", "dateTime", "dateRange", "checked"})


def _error(description: str, message: str, *, field: str | None = None, code: int = 1000) -> dict[str, Any]:
    return {"code": code, "fieldName": field, "description": description, "message": message, "errorParams": {}}


def _refused(*errors: dict[str, Any], message: str = "Request failed", status: int = 200) -> web.Response:
    return web.json_response(
        {"successful": False, "message": message, "errors": list(errors), "warnings": []}, status=status
    )


def _parse_iso(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class UnicommerceSimulator(Simulator):
    vendor = "unicommerce"
    api_prefixes = (API,)

    def __init__(
        self,
        *,
        username: str = "demo@example.com",
        password: str = "demo-password",
        facilities: tuple[str, ...] = ("DEMO_WH", "DEMO_STORE"),
        refresh_ttl_s: float = 30 * 86400.0,
        timing: Timing | None = None,
        faults: FaultPlan | None = None,
        seed: int | None = None,
        record: bool = True,
    ) -> None:
        super().__init__(timing=timing, faults=faults, seed=seed, record=record)
        self.username = username
        self.password = password
        self.facilities = facilities
        self.refresh_ttl_s = refresh_ttl_s
        self.refresh_tokens: dict[str, float] = {}  # refresh token -> expiry (monotonic)
        self._numbers = itertools.count(1)

    def call_kind(self, request: web.Request) -> str | None:
        path = request.path
        if path == "/oauth/token":
            return "token"
        if path == API + "v1/export/job/create":
            return "submit"
        if path == API + "v1/export/job/status":
            return "poll"
        if path.startswith("/files/"):
            return "download"
        return super().call_kind(request)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/oauth/token", self.token)
        app.router.add_post(API + "v1/export/job/create", self.create)
        app.router.add_post(API + "v1/export/job/status", self.status)
        app.router.add_get("/files/{job_code}.csv", self.download)
        app.router.add_post("/_sim/cancel/{job_code}", self._sim_cancel)
        app.router.add_post("/_sim/revoke-refresh-tokens", self._sim_revoke)

    def make_job_id(self) -> str:
        return f"EXP{next(self._numbers):07d}"

    # ---- control -----------------------------------------------------------------------
    def cancel(self, job_code: str) -> bool:
        job = self.jobs.get(job_code)
        if job is None or job.stage(time.monotonic()) >= len(job.durations):
            return False
        job.cancelled_at = time.monotonic()
        return True

    async def _sim_cancel(self, request: web.Request) -> web.Response:
        return web.json_response({"cancelled": self.cancel(request.match_info["job_code"])})

    def revoke_refresh_tokens(self) -> None:
        self.refresh_tokens.clear()

    async def _sim_revoke(self, _request: web.Request) -> web.Response:
        self.revoke_refresh_tokens()
        return web.json_response({"revoked": True})

    # ---- auth --------------------------------------------------------------------------
    def _grant(self, refresh: str | None = None) -> web.Response:
        token, ttl = self.issue_token()
        if refresh is None:
            refresh = secrets.token_urlsafe(24)
            self.refresh_tokens[refresh] = time.monotonic() + self.refresh_ttl_s
        return web.json_response(
            {
                "access_token": token,
                "token_type": "bearer",
                "refresh_token": refresh,
                "expires_in": ttl,
                "scope": "read trust write",
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("client_id") != CLIENT_ID:
            return web.json_response(
                {"error": "invalid_client", "error_description": "Bad client credentials"}, status=401
            )
        grant = query.get("grant_type")
        if grant == "password":
            if query.get("username") != self.username or query.get("password") != self.password:
                return web.json_response({"error": "invalid_grant", "error_description": "Bad credentials"}, status=400)
            return self._grant()
        if grant == "refresh_token":
            refresh = query.get("refresh_token", "")
            expiry = self.refresh_tokens.get(refresh)
            if expiry is None or expiry <= time.monotonic():
                return web.json_response(
                    {"error": "invalid_grant", "error_description": f"Invalid refresh token: {refresh}"}, status=400
                )
            return self._grant(refresh)
        return web.json_response(
            {"error": "unsupported_grant_type", "error_description": f"Unsupported grant type: {grant}"}, status=400
        )

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.token_valid(self.bearer(request)):
            return None
        return web.json_response({"error": "invalid_token", "error_description": "Access token expired"}, status=401)

    def _facility(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        facility = request.headers.get("Facility")
        if not facility:
            return None, _refused(_error("Facility can not be empty", "MISSING_FACILITY", field="Facility"))
        if facility not in self.facilities:
            return None, web.json_response(
                {"successful": False, "message": f"Access denied for facility {facility}"}, status=403
            )
        return facility, None

    # ---- export jobs -------------------------------------------------------------------
    async def create(self, request: web.Request) -> web.StreamResponse:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        facility, refused = self._facility(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return _refused(_error("Invalid request body", "INVALID_REQUEST"))
        if not isinstance(body, dict):
            return _refused(_error("Invalid request body", "INVALID_REQUEST"))
        problem = self._check_create(body)
        if problem is not None:
            return _refused(problem)
        job = self.new_job(facility or "", body, facility=facility, columns=tuple(body["exportColums"]))
        # The docs say SUCCESSFUL, real clients see COMPLETE: odd jobs say one, even the other.
        job.extra["done_word"] = "COMPLETE" if int(job.job_id[3:]) % 2 else "SUCCESSFUL"
        if self.faults.submit_lost():
            return await drop_connection(request)
        return web.json_response(
            {"successful": True, "message": None, "errors": [], "warnings": [], "jobCode": job.job_id}
        )

    @staticmethod
    def _check_create(body: dict[str, Any]) -> dict[str, Any] | None:
        """The first thing Uniware would complain about in a create body, or None."""
        name = body.get("exportJobTypeName")
        if not isinstance(name, str) or not name:
            return _error(
                "exportJobTypeName can not be empty", "MISSING_REQUIRED_PARAMETERS", field="exportJobTypeName"
            )
        if name not in EXPORT_TYPES:
            return _error(f"Invalid export job type: {name}", "INVALID_EXPORT_JOB_TYPE", field="exportJobTypeName")
        columns = body.get("exportColums")
        if isinstance(columns, str):
            return _error(
                "Can not deserialize instance of java.util.ArrayList out of VALUE_STRING token "
                '(through reference chain: CreateExportJobRequest["exportColums"])',
                "INVALID_REQUEST",
                field="exportColums",
            )
        if not isinstance(columns, list) or not columns:
            return _error("exportColums can not be empty", "MISSING_REQUIRED_PARAMETERS", field="exportColums")
        unknown = [c for c in columns if c not in EXPORT_TYPES[name]]
        if unknown:
            return _error(
                f"Invalid columns: {', '.join(map(str, unknown))}", "INVALID_EXPORT_COLUMN", field="exportColums"
            )
        if not body.get("frequency"):
            return _error("frequency can not be empty", "MISSING_REQUIRED_PARAMETERS", field="frequency", code=200204)
        if body["frequency"] not in ("ONETIME", "RECURRENT"):
            return _error(
                f"Invalid frequency: {body['frequency']}", "INVALID_FREQUENCY", field="frequency", code=200204
            )
        filters = body.get("exportFilters") or []
        if not isinstance(filters, list):
            return _error("exportFilters must be a list", "INVALID_REQUEST", field="exportFilters")
        for i, item in enumerate(filters):
            if not isinstance(item, dict):
                return _error(f"exportFilters[{i}] must be an object", "INVALID_REQUEST", field="exportFilters")
            extra = sorted(set(item) - FILTER_FIELDS)
            if extra:
                return _error(
                    f'Unrecognized field "{extra[0]}" (class com.unifier.core.api.export.WsExportFilter), '
                    "not marked as ignorable",
                    "INVALID_REQUEST",
                    field=f"exportFilters[{i}]",
                )
            if not item.get("id"):
                return _error(f"exportFilters[{i}].id can not be empty", "MISSING_REQUIRED_PARAMETERS")
            if "dateRange" in item:
                date_range = item["dateRange"]
                if not isinstance(date_range, dict) or not (
                    date_range.get("textRange")
                    or (_parse_iso(date_range.get("start")) and _parse_iso(date_range.get("end")))
                ):
                    return _error("DateRange is mandatory for daterange value type", "INVALID_REQUEST")
            if "selectedValues" in item and not (
                isinstance(item["selectedValues"], list) and all(isinstance(v, str) for v in item["selectedValues"])
            ):
                return _error(f"exportFilters[{i}].selectedValues must be a list of strings", "INVALID_REQUEST")
        return None

    def status_of(self, job: SimJob, now: float) -> str:
        if job.cancelled_at is not None:
            return "CANCELLED"
        stage = job.stage(now)
        if stage < len(job.durations):
            return IN_PROGRESS[min(stage, len(IN_PROGRESS) - 1)]
        return "FAILED" if job.fails else str(job.extra["done_word"])

    async def status(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        code = body.get("jobCode") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code:
            return _refused(_error("jobCode can not be empty", "MISSING_REQUIRED_PARAMETERS", field="jobCode"))
        job = self.jobs.get(code)
        if job is None:
            return _refused(_error(f"Invalid job code: {code}", "INVALID_JOB_CODE", field="jobCode"))
        status = self.status_of(job, time.monotonic())
        answer: dict[str, Any] = {
            "successful": True,
            "message": None,
            "errors": [],
            "warnings": [],
            "status": status,
            "filePath": None,
        }
        if status in ("COMPLETE", "SUCCESSFUL"):
            answer["filePath"] = f"{self.base_url}/files/{job.job_id}.csv"
        elif status == "FAILED":
            answer["message"] = "Export failed: query timed out on the reporting replica"
        return web.json_response(answer)

    async def download(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_code"])
        now = time.monotonic()
        if job is None or self.status_of(job, now) not in ("COMPLETE", "SUCCESSFUL"):
            return web.Response(
                status=404, text="<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml"
            )
        finished = job.created + sum(job.durations)
        if now > finished + self.timing.link_ttl_s:
            return web.Response(
                status=403,
                text="<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                content_type="application/xml",
            )
        out = io.StringIO()
        writer = csv.writer(out)
        columns = job.extra["columns"]
        writer.writerow(columns)
        for row in range(2):
            writer.writerow([f"{column}-{row + 1}" for column in columns])
        return web.Response(text=out.getvalue(), content_type="text/csv")


def demo_connection(base_url: str) -> Any:
    """A connection to this simulator with its demo credentials (inline: demo only)."""
    from worker.config import ConnectionConfig, SecretRef

    return ConnectionConfig(
        vendor="unicommerce",
        base_url=base_url,
        username="demo@example.com",
        password=SecretRef(value="demo-password"),
        facility="DEMO_WH",
    )


def sample_job() -> tuple[str, dict[str, Any]]:
    now_ms = int(time.time() * 1000)
    return (
        "export.v1.UnicommerceExport",
        {
            "export_job_type_name": "Sale Orders",
            "export_columns": ["saleOrderCode", "displayOrderCode", "channel", "status", "created"],
            "export_filters": [
                {
                    "id": "addedOn",
                    "selected_values": [],
                    "text": None,
                    "date_range": {"start": now_ms - 30 * 86_400_000, "end": now_ms},
                }
            ],
            "facility": None,
        },
    )
