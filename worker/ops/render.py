"""How operator commands look: rich tables on stdout, progress bars on stderr (only on a
terminal), JSON when asked. Tables and JSON go to stdout so they can be piped; notes,
warnings and progress go to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from worker.engine.model import JobState
from worker.ops.lineage import Lineage, job_row
from worker.ops.run import Outcome, OutcomeKind, RunReport

COLORS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "REJECTED": "red",
    "CANCELLED": "yellow",
    "EXPIRED": "yellow",
    "DUPLICATE": "cyan",
}
KIND_COLORS = {
    OutcomeKind.SKIP: "dim",
    OutcomeKind.REANNOUNCE: "green",
    OutcomeKind.DUPLICATE: "cyan",
    OutcomeKind.RESUBMIT: "yellow",
    OutcomeKind.CANCEL: "magenta",
    OutcomeKind.FAIL: "red",
}


def stdout() -> Console:
    """Tables at the terminal's width; piped, at their natural width (nothing cut)."""
    console = Console(soft_wrap=True, highlight=False)
    if not console.is_terminal:
        console = Console(soft_wrap=True, highlight=False, width=10_000)
    return console


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def note(text: str) -> None:
    stderr().print(escape(text))


class RateColumn(ProgressColumn):
    """Records per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rec/s", style="progress.data.speed")


class ConsoleHooks:
    """Progress bars with rate and ETA on stderr; per-record outcomes on stdout."""

    def __init__(self, *, show_outcomes: bool = True) -> None:
        self.err = stderr()
        self.out = stdout()
        self.show_outcomes = show_outcomes
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def phase(self, description: str, total: int | None) -> None:
        self.done()
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            disable=not self.err.is_terminal,
        )
        self.progress.start()
        self.task = self.progress.add_task(description, total=total)

    def advance(self, records: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, records)

    def outcome(self, where: str, outcome: Outcome) -> None:
        if not self.show_outcomes:
            return
        line = f"{where:>12}  {outcome.request_id or '-'}  [{KIND_COLORS[outcome.kind]}]{escape(outcome.text)}[/]"
        # On a terminal the bar owns the screen: print through it so lines do not tear it.
        live = self.progress is not None and self.out.is_terminal and self.err.is_terminal
        (self.progress.console if live and self.progress else self.out).print(line)

    def interrupted(self, report: RunReport) -> None:
        self.done()
        where = ", ".join(f"{p}:{o}" for p, o in sorted(report.last.items())) or "nothing yet"
        if report.dry_run:
            note(f"interrupted after {report.read} records (last read {where})")
        elif report.checkpoint is not None:
            note(
                f"interrupted: {report.replayed} records replayed (last offsets {where}); checkpoint saved to "
                f"{report.checkpoint}: rerun the same command to continue"
            )
        else:
            note(
                f"interrupted: {report.replayed} records replayed (last offsets {where}); no --checkpoint was given, "
                "continue with --from-offset after these offsets"
            )

    def done(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.task = None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)


def _status(status: str) -> str:
    color = COLORS.get(status)
    return f"[{color}]{status}[/]" if color else status


def jobs_table(jobs: Iterable[JobState], *, total: int) -> None:
    table = Table(title=None, show_lines=False)
    columns = ("request_id", "tenant", "connection/vendor", "status", "phase", "vendor job", "seq", "dup?", "updated")
    for name in columns:
        table.add_column(name, no_wrap=name in ("request_id", "status", "updated"))
    shown = 0
    for state in jobs:
        row = job_row(state)
        shown += 1
        table.add_row(
            escape(row["request_id"]),
            escape(row["tenant"]),
            escape(f"{row['connection']}/{row['vendor']}"),
            _status(row["status"]),
            row["phase"],
            escape(_cell(row["vendor_job_id"])),
            str(row["sequence"]),
            _cell(row["possible_duplicate"]),
            row["updated_at"],
        )
    stdout().print(table)
    note(f"{shown} of {total} jobs")


def lineage_view(lineage: Lineage) -> None:
    data = lineage.as_json()
    out = stdout()
    request, job = data["request"], data["vendor_job"]
    out.print(f"[bold]request[/] {escape(lineage.request_id)}")
    if request is None:
        gone = "deleted after its retention (tombstone)" if lineage.state_deleted else "not in export.jobs"
        out.print(f"  state: {gone}")
    else:
        for label, value in (
            ("tenant", request["tenant"]),
            ("connection", f"{request['connection']} ({request['vendor']})"),
            ("requested at", request["requested_at"]),
            ("correlation id", request["correlation_id"]),
            ("labels", json.dumps(request["labels"]) if request["labels"] else None),
            ("replay of", request["replay_of"]),
            ("read from", f"partition:offset {request['read_from']}"),
            ("trace id", request.get("trace_id")),
            ("job", json.dumps(request["job"], sort_keys=True)),
        ):
            if value:
                out.print(f"  {label + ':':<18}{escape(str(value))}")
        out.print("[bold]vendor job[/]")
        for label, value in (
            ("id", job["vendor_job_id"] or "(none yet)"),
            ("status", f"{job['status']} ({job['phase']}), vendor says {job['vendor_status'] or '-'}"),
            ("submit attempts", job["submit_attempts"]),
            ("possible dup", "yes: the vendor may hold a second job" if job["possible_duplicate"] else "no"),
            ("error", f"{job['error']['code']}: {job['error']['message']}" if job["error"] else None),
            ("finished at", job["finished_at"]),
        ):
            if value not in (None, ""):
                out.print(f"  {label + ':':<18}{escape(str(value))}")
    table = Table(title="status changes", title_justify="left")
    for name in ("seq", "status", "vendor status", "vendor job", "at", "error"):
        table.add_column(name)
    for e in data["statuses"]:
        error = f"{e['error']['code']}: {e['error']['message']}" if e["error"] else ""
        dup = " (possible duplicate)" if e["possible_duplicate"] else ""
        table.add_row(
            str(e["sequence"]),
            _status(e["status"]) + dup,
            escape(_cell(e["vendor_status"])),
            escape(_cell(e["vendor_job_id"])),
            e["at"],
            escape(error),
        )
    out.print(table)
    files = Table(title="files", title_justify="left")
    for name in ("url", "format", "expires", "size", "sha256", "produced", "re-announced"):
        files.add_column(name, overflow="fold")
    for f in data["files"]:
        files.add_row(
            escape(f["url"]),
            escape(_cell(f["format"])),
            f["expires_at"],
            _cell(f["size_bytes"]),
            escape(_cell(f["sha256"])),
            f["produced_at"],
            _cell(f["reannounced"]),
        )
    out.print(files)
    if lineage.scanned_all:
        note(f"not in its murmur2 partition of {', '.join(lineage.scanned_all)}: every partition was read")


def dlq_table(rows: list[dict[str, Any]]) -> None:
    table = Table()
    for name in ("reason_code", "reason", "failed_at", "original", "request_id", "key", "dlq"):
        table.add_column(name, overflow="fold", no_wrap=name in ("reason_code", "failed_at"))
    for r in rows:
        table.add_row(
            escape(r["reason_code"]),
            escape(r["reason"]),
            r["failed_at"],
            escape(f"{r['topic']}[{r['partition']}]@{r['offset']}"),
            escape(_cell(r["request_id"])),
            escape(r["key"]),
            r["dlq_position"],
        )
    stdout().print(table)


def paused_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        note("nothing is paused")
        return
    table = Table()
    for name in ("kind", "name", "reason", "by", "since"):
        table.add_column(name)
    for r in rows:
        table.add_row(*(escape(str(r[k])) for k in ("kind", "name", "reason", "by", "since")))
    stdout().print(table)


def budgets_tables(report: dict[str, Any]) -> None:
    fleet = Table(title=f"fleet budgets ({report['mode']}, {report['partitions']} partitions)", title_justify="left")
    for name in ("connection", "vendor", "rate/s", "calls", "paused", "blocked until"):
        fleet.add_column(name)
    for r in report["connections"]:
        fleet.add_row(
            escape(r["connection"]),
            r["vendor"],
            f"{r['rate_per_s']:g}",
            str(r["max_concurrency"]),
            "yes" if r["paused"] else "",
            r["blocked_until"],
        )
    stdout().print(fleet)
    if not report["shares"]:
        note("no worker is in the group")
        return
    shares = Table(title="each worker's share", title_justify="left")
    for name in ("worker", "partitions", "connection", "rate/s", "calls"):
        shares.add_column(name)
    for r in report["shares"]:
        shares.add_row(
            escape(r["worker"]), str(r["partitions"]), escape(r["connection"]), f"{r['rate_per_s']:g}",
            str(r["max_concurrency"]),
        )  # fmt: skip
    stdout().print(shares)
    if report["exclusive"]:
        homes = Table(title="exclusive kinds: one at a time, queued in their home partition", title_justify="left")
        for name in ("connection", "kind", "home partition", "worker"):
            homes.add_column(name)
        for r in report["exclusive"]:
            homes.add_row(escape(r["connection"]), r["kind"], str(r["home_partition"]), escape(r["worker"]))
        stdout().print(homes)


def run_summary(report: RunReport) -> None:
    """The end of a replay run: counts per outcome (dry run) or what was written."""
    if report.already_complete:
        note(f"checkpoint {report.checkpoint} says this run is complete: nothing left to replay")
        return
    resumed = " (resumed from the checkpoint)" if report.resumed else ""
    if report.dry_run:
        table = Table(title=f"dry run of {report.command}{resumed}: {report.matched} records", title_justify="left")
        table.add_column("outcome")
        table.add_column("records", justify="right")
        for kind in OutcomeKind:
            if report.outcomes.get(kind.value):
                table.add_row(f"[{KIND_COLORS[kind]}]{kind.value}[/]", str(report.outcomes[kind.value]))
        stdout().print(table)
        if report.unchecked:
            note(
                "connections and vendor rules were not checked: give --connections (or EXPORT_WORKER_CONNECTIONS_FILE)"
            )
        return
    parts = [f"replayed {report.replayed} of {report.matched} matching records to their topic{resumed}"]
    if report.not_replayable:
        parts.append(f"{report.not_replayable} not replayable (listed above)")
    if report.tag:
        parts.append(f"derived ids end in ~r{report.tag}")
    if report.checkpoint is not None:
        parts.append(f"checkpoint {report.checkpoint}")
    note("; ".join(parts))
