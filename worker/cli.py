"""``export-worker``: thin commands that parse flags, build settings, and call one function."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from worker.config import ConnectionConfig, Settings, describe_invalid
from worker.errors import ExportWorkerError
from worker.signals import ShutdownDeadline, stop_on_signals

try:  # typer >= 0.2x carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import ClickException  # type: ignore[assignment]


class OneLineErrors(TyperGroup):
    """Usage errors (bad flag, bad value) as one line on stderr and exit code 2, like
    the rest of the command's errors, instead of a usage box."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except ClickException as exc:
            if exc.__class__.__name__ != "NoArgsIsHelpError":  # that one has printed the help
                ctx = getattr(exc, "ctx", None)
                where = f"{ctx.command_path}: " if ctx is not None else ""
                print_error(f"{where}{exc.format_message()} (see --help)")
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="export-worker",
    cls=OneLineErrors,
    help="Kafka workers that run vendor export jobs: submit, poll, announce files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def print_error(message: str) -> None:
    """One line on stderr, however long and whatever it contains."""
    err.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", soft_wrap=True)


def settings_from_env(**overrides: Any) -> Settings:
    """The only place the environment is read."""
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise typer.BadParameter(f"invalid settings: {describe_invalid(exc)}") from None


def fail(message: str, code: int = 1) -> typer.Exit:
    print_error(message)
    return typer.Exit(code)


def run_async(coro: Any) -> Any:
    """Run a coroutine; known errors become one clear line and exit code 1 (2 for
    usage errors found while running), Ctrl-C exit code 130."""
    from worker.kafka import BrokerUnavailable

    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (ExportWorkerError, BrokerUnavailable) as exc:
        raise fail(str(exc), getattr(exc, "exit_code", 1)) from None


@app.command()
def run(
    connections: Annotated[
        Path | None, typer.Option("--connections", "-c", help="vendor connections file (TOML or JSON)")
    ] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (else KAFKA_BOOTSTRAP)")] = None,
    http_port: Annotated[int | None, typer.Option(help="side port for /healthz /readyz /metrics")] = None,
) -> None:
    """Run a worker until SIGTERM/SIGINT; then finish in-flight calls, commit and leave.

    Example: EXPORT_WORKER_CONNECTIONS_FILE=connections.toml KAFKA_BOOTSTRAP=kafka:9092 export-worker run
    """
    import os

    import structlog

    from worker.allocator import limit_arenas
    from worker.collector import tune_collector
    from worker.config import unknown_env_vars
    from worker.observability import configure_logging
    from worker.runtime import Worker
    from worker.tracing import Tracing

    limit_arenas()  # before librdkafka and RocksDB start their threads
    settings = settings_from_env(connections_file=connections, kafka_bootstrap=bootstrap, http_port=http_port)
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("export_worker")
    for name in unknown_env_vars(os.environ):
        log.warning("unknown setting ignored", name=name)

    async def main() -> None:
        deadline = ShutdownDeadline(settings.shutdown_grace_s)
        stop = stop_on_signals(deadline.on_signal)
        deadline.watch(stop)
        tracing = Tracing.from_env(instance_id=settings.instance_id)
        if tracing.enabled:
            log.info("tracing on", exporter=os.environ.get("OTEL_TRACES_EXPORTER"))
        worker = Worker(settings, tracing=tracing)
        tune_collector()
        try:
            await worker.run(stop)
        finally:
            if worker.producer_stuck:
                # A thread may be blocked inside librdkafka for good: a normal exit would
                # wait for it forever. The next owner resumes from what Kafka holds.
                print_error(
                    "the Kafka transactional producer is unusable (see the log); exiting at once for a new process"
                )
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            tracing.shutdown()  # sends the spans still buffered (a few seconds at most)

    run_async(main())


@app.command()
def simulate(
    vendors: Annotated[list[str] | None, typer.Argument(help="vendors to simulate (default: all)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="first port (one per vendor); 0 picks free ports")] = 0,
    stage_seconds: Annotated[float, typer.Option(help="seconds per in-progress stage of a job")] = 2.0,
    fault: Annotated[
        list[str] | None, typer.Option(help="fault as name=value, e.g. rate_429=0.1 (see /_sim/faults)")
    ] = None,
    write_connections: Annotated[
        Path | None, typer.Option(help="write a connections file for these simulators")
    ] = None,
    record: Annotated[bool, typer.Option(help="keep a log of every request (see /_sim/requests)")] = True,
) -> None:
    """Run vendor simulators (aiohttp) speaking each vendor's protocol, with injectable faults.

    Example: export-worker simulate itron --port 8081 --fault rate_429=0.05 --write-connections conn.json
    """
    from worker import simulators
    from worker.simulators.base import Timing
    from worker.simulators.faults import FaultPlan

    chosen = vendors or simulators.available()
    unknown = [v for v in chosen if v not in simulators.available()]
    if unknown:
        raise fail(f"no simulator for {', '.join(unknown)}; available: {', '.join(simulators.available())}", 2)
    plan = FaultPlan()
    try:
        plan.update(dict(f.split("=", 1) for f in fault or []))
    except ValueError as exc:
        raise fail(f"bad --fault: {exc}", 2) from None

    async def main() -> None:
        sims = {}
        for i, vendor in enumerate(chosen):
            sim = simulators.simulator_class(vendor)(
                timing=Timing(stages=(stage_seconds,) * 3), faults=plan, record=record
            )
            sims[vendor] = sim
            url = await sim.start(host, port + i if port else 0)
            err.print(f"{vendor:<12} {url}")
        if write_connections is not None:
            conns = {
                vendor: json.loads(simulators.module(vendor).demo_connection(sim.base_url).model_dump_json())
                for vendor, sim in sims.items()
            }
            write_connections.write_text(json.dumps({"connections": _reveal(conns)}, indent=2))
            err.print(f"connections written to {write_connections}")
        stop = stop_on_signals()
        await stop.wait()
        for sim in sims.values():
            await sim.stop()

    run_async(main())


def _reveal(conns: dict[str, Any]) -> dict[str, Any]:
    """Simulator demo credentials are written in clear (they are the simulator's own)."""
    from worker import simulators

    out = {}
    for vendor, conf in conns.items():
        model = simulators.module(vendor).demo_connection(conf["base_url"])
        for field in ("client_secret", "password", "api_key"):
            ref = getattr(model, field)
            if ref is not None and ref.value is not None:
                conf[field] = {"value": ref.value.get_secret_value()}
        out[vendor] = conf
    return out


@app.command()
def produce(
    file: Annotated[Path | None, typer.Option("--file", "-f", help="JSON: one request, a list, or JSON lines")] = None,
    request_id: Annotated[str | None, typer.Option(help="request id (default: a new UUID)")] = None,
    tenant: Annotated[str, typer.Option(help="tenant")] = "default",
    connection: Annotated[str | None, typer.Option(help="connection name")] = None,
    job: Annotated[
        str | None, typer.Option(help='job as JSON with "type", e.g. {"type": "ElasticPathJob", ...}')
    ] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (else KAFKA_BOOTSTRAP)")] = None,
) -> None:
    """Publish ExportRequested records to the request topic and print their request ids.

    Example: export-worker produce --connection itron --job '{"type": "ItronBatchRequest", "filetype": "Csv",
    "tokens": {"StartEventDate": "2026-10-01", "EndEventDate": "2026-10-31"}}'
    """
    from worker.produce import load_requests, publish_requests

    settings = settings_from_env(kafka_bootstrap=bootstrap)
    try:
        if file is not None:
            records = load_requests(file.read_text())
        elif connection and job:
            records = load_requests(
                json.dumps(
                    {"request_id": request_id, "tenant": tenant, "connection": connection, "job": json.loads(job)}
                )
            )
        else:
            raise fail("give --file, or --connection and --job", 2)
    except (ValueError, OSError) as exc:
        raise fail(f"cannot read the request: {exc}", 2) from None
    ids = run_async(publish_requests(settings, records))
    for rid in ids:
        typer.echo(rid)


@app.command()
def demo(
    requests_per_vendor: Annotated[int, typer.Option(help="sample requests per vendor")] = 3,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 120.0,
    console_port: Annotated[
        int, typer.Option(min=-1, max=65_535, help="the web console's port (a free one if taken; -1: no console)")
    ] = 8090,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="keep everything running after the requests finish (Ctrl-C stops)")
    ] = False,
) -> None:
    """Start Kafka (embedded unless KAFKA_BOOTSTRAP is set), the vendor simulators and a worker,
    publish sample requests and show them reaching file-ready in a live table.

    Example: make demo   (or: KAFKA_BOOTSTRAP=localhost:9092 export-worker demo)
    """
    from worker.demo import run_demo

    ok = run_async(
        run_demo(
            requests_per_vendor=requests_per_vendor,
            timeout=timeout,
            console_port=console_port,
            keep_running=keep_running,
        )
    )
    raise typer.Exit(0 if ok else 1)


# ---- operator commands: jobs, replay, dlq, pause/resume ---------------------------------------

jobs_app = typer.Typer(
    name="jobs", help="Jobs in export.jobs and their lineage.", no_args_is_help=True, add_completion=False
)
dlq_app = typer.Typer(
    name="dlq", help="The dead-letter topic: list and replay.", no_args_is_help=True, add_completion=False
)
app.add_typer(jobs_app)
app.add_typer(dlq_app)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


Bootstrap = Annotated[str | None, typer.Option(help="Kafka bootstrap servers (else KAFKA_BOOTSTRAP)")]
Output = Annotated[OutputFormat, typer.Option("--output", "-o", help="table or json")]
Since = Annotated[
    str | None, typer.Option(help="only since TIME: ISO 8601 (2026-03-01T12:00Z) or relative (-24h, -30m, -7d)")
]
Connections = Annotated[
    Path | None,
    typer.Option("--connections", "-c", help="the workers' connections file, to check connections and vendor rules"),
]
Checkpoint = Annotated[
    Path | None, typer.Option(help="resumable run: progress is saved here; rerun the same command to continue")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="publish nothing; say what the worker would do with each")]


def connection_configs(settings: Settings) -> dict[str, ConnectionConfig] | None:
    from worker.config import ConnectionsFile

    if settings.connections_file is None:
        return None
    try:
        return ConnectionsFile.load(settings.connections_file).connections
    except ExportWorkerError as exc:
        raise fail(str(exc), 2) from None


@jobs_app.command("list")
def jobs_list(
    vendor: Annotated[str | None, typer.Option(help="only these vendors (comma-separated)")] = None,
    status: Annotated[str | None, typer.Option(help="only these statuses, e.g. RUNNING,SUBMITTED")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    connection: Annotated[str | None, typer.Option(help="only this connection")] = None,
    since: Since = None,
    output: Output = OutputFormat.table,
    bootstrap: Bootstrap = None,
) -> None:
    """List jobs from export.jobs with their status, vendor job and last update.

    Reads every partition to its end (read_committed) and keeps the latest state per
    request; oldest update first.

    Example: export-worker jobs list --vendor itron --status RUNNING,SUBMITTED --since -2h
    """
    from worker.ops import lineage, render

    settings = settings_from_env(kafka_bootstrap=bootstrap)
    hooks = render.ConsoleHooks()
    listing = run_async(
        lineage.list_jobs(
            settings, vendor=vendor, status=status, tenant=tenant, connection=connection, since=since, hooks=hooks
        )
    )
    if output is OutputFormat.json:
        render.print_json([lineage.job_row(s) for s in listing.jobs])
    else:
        render.jobs_table(listing.jobs, total=listing.total)
    if listing.undecodable:
        render.note(f"{listing.undecodable} state records could not be decoded")


@jobs_app.command("show")
def jobs_show(
    request_id: Annotated[str, typer.Argument(help="the request id (the records' key)")],
    output: Output = OutputFormat.table,
    bootstrap: Bootstrap = None,
) -> None:
    """Show a request's lineage: request -> vendor job -> every status change -> file(s).

    Example: export-worker jobs show 3f2c9a7e-itron-march --output json
    """
    from worker.ops import lineage, render

    settings = settings_from_env(kafka_bootstrap=bootstrap)
    found = run_async(lineage.show_job(settings, request_id, hooks=render.ConsoleHooks()))
    if output is OutputFormat.json:
        render.print_json(found.as_json())
    else:
        render.lineage_view(found)


@app.command()
def replay(
    from_time: Annotated[str | None, typer.Option("--from", help="start at TIME: ISO 8601 or relative (-24h)")] = None,
    from_offset: Annotated[
        list[str] | None, typer.Option(help="start at PARTITION:OFFSET (repeatable; only these partitions)")
    ] = None,
    to_time: Annotated[str | None, typer.Option("--to", help="stop before TIME (default: the end now)")] = None,
    to_offset: Annotated[list[str] | None, typer.Option(help="stop after PARTITION:OFFSET (inclusive)")] = None,
    vendor: Annotated[str | None, typer.Option(help="only requests for these vendors (comma-separated)")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's requests")] = None,
    connection: Annotated[str | None, typer.Option(help="only requests for this connection")] = None,
    topic: Annotated[str | None, typer.Option(help="topic to read requests from (default the request topic)")] = None,
    dry_run: DryRun = False,
    force: Annotated[
        bool, typer.Option("--force", help="export again under new ids <id>~r<tag> with replay_of=<id>")
    ] = False,
    tag: Annotated[
        str | None, typer.Option(help="the <tag> of --force ids (default: from the checkpoint, or now)")
    ] = None,
    checkpoint: Checkpoint = None,
    connections: Connections = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Re-publish requests of a time or offset range, without creating duplicate vendor jobs.

    Each request goes back to the request topic with its original key, marked as a
    replay of itself (replay_of = its request id); the worker finds it in its state: a
    finished export's file is re-announced (while its link is valid), an open one is
    answered DUPLICATE, a rejected or unknown one runs.
    --dry-run says per request what the worker would do; --force exports again under
    derived ids <id>~r<tag>. Ctrl-C saves the --checkpoint and exits 130; running the
    same command again continues after the last replayed record.

    Example: export-worker replay --from -24h --vendor itron --dry-run -c connections.toml
    (then without --dry-run, with --checkpoint itron-day.json)
    """
    from worker.ops import render
    from worker.ops.replay import ReplayOptions, replay_requests

    settings = settings_from_env(kafka_bootstrap=bootstrap, connections_file=connections)
    options = ReplayOptions(
        from_time=from_time,
        from_offsets=tuple(from_offset or ()),
        to_time=to_time,
        to_offsets=tuple(to_offset or ()),
        vendor=vendor,
        tenant=tenant,
        connection=connection,
        topic=topic,
        force=force,
        tag=tag,
        dry_run=dry_run,
        checkpoint=checkpoint,
        connections=connection_configs(settings),
    )
    report = run_async(replay_requests(settings, options, hooks=render.ConsoleHooks()))
    render.run_summary(report)


@dlq_app.command("list")
def dlq_list(
    reason: Annotated[str | None, typer.Option(help="only these reason codes, e.g. unknown_connection")] = None,
    since: Since = None,
    output: Output = OutputFormat.table,
    bootstrap: Bootstrap = None,
) -> None:
    """List dead letters: reason, when, where the record was, its request id and key.

    Example: export-worker dlq list --reason unknown_connection,out_of_range --since -7d
    """
    from worker.ops import dlq, render

    settings = settings_from_env(kafka_bootstrap=bootstrap)
    listing = run_async(dlq.list_dead_letters(settings, reason=reason, since=since, hooks=render.ConsoleHooks()))
    if output is OutputFormat.json:
        render.print_json(listing.rows)
    else:
        render.dlq_table(listing.rows)
        render.note(f"{len(listing.rows)} of {listing.read} dead letters")
    if listing.undecodable:
        render.note(f"{listing.undecodable} records on the dead-letter topic are not DeadLetters")


@dlq_app.command("replay")
def dlq_replay(
    reason: Annotated[str | None, typer.Option(help="only these reason codes (comma-separated)")] = None,
    since: Since = None,
    dry_run: DryRun = False,
    checkpoint: Checkpoint = None,
    connections: Connections = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Write dead letters back to their original topic once the cause is fixed.

    Each dead letter's original key, value and headers go to its original topic and
    partition (e.g. after a missing connection was added). --dry-run says per record
    whether the worker would now accept it, or why it is still invalid.

    Example: export-worker dlq replay --reason unknown_connection --dry-run -c connections.toml
    """
    from worker.ops import dlq, render

    settings = settings_from_env(kafka_bootstrap=bootstrap, connections_file=connections)
    report = run_async(
        dlq.replay_dead_letters(
            settings,
            reason=reason,
            since=since,
            dry_run=dry_run,
            checkpoint=checkpoint,
            connections=connection_configs(settings),
            hooks=render.ConsoleHooks(),
        )
    )
    render.run_summary(report)


def operator_name() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


Target = Annotated[str, typer.Argument(help="a connection name, or a vendor with --vendor")]
VendorFlag = Annotated[bool, typer.Option("--vendor", help="TARGET is a vendor: every connection of it")]
Reason = Annotated[str | None, typer.Option(help="why, shown by `export-worker paused`")]


def _set_paused(target: str, vendor: bool, paused: bool, reason: str | None, bootstrap: str | None) -> None:
    from worker.ops.pause import set_paused

    settings = settings_from_env(kafka_bootstrap=bootstrap)
    key = run_async(set_paused(settings, target, vendor=vendor, paused=paused, reason=reason, by=operator_name()))
    what = "paused: no new submits; open jobs keep polling to the end" if paused else "resumed: waiting jobs submit"
    err.print(f"{escape(key)} {what}", soft_wrap=True)


@app.command()
def pause(target: Target, vendor: VendorFlag = False, reason: Reason = None, bootstrap: Bootstrap = None) -> None:
    """Pause a connection (or a whole vendor) so it drains: no new submits, open jobs finish.

    Workers keep polling its open jobs to the end; new requests are accepted and wait
    until `export-worker resume`.

    Example: export-worker pause itron-prod --reason "vendor maintenance 02:00-04:00"
    """
    _set_paused(target, vendor, True, reason, bootstrap)


@app.command()
def resume(target: Target, vendor: VendorFlag = False, reason: Reason = None, bootstrap: Bootstrap = None) -> None:
    """Resume a paused connection (or vendor): the requests that waited are submitted.

    Example: export-worker resume itron --vendor
    """
    _set_paused(target, vendor, False, reason, bootstrap)


@app.command()
def paused(output: Output = OutputFormat.table, bootstrap: Bootstrap = None) -> None:
    """Show what is paused now (from the control topic), with reason, by whom and since when.

    Example: export-worker paused --output json
    """
    from worker.ops import render
    from worker.ops.pause import list_paused

    settings = settings_from_env(kafka_bootstrap=bootstrap)
    rows = run_async(list_paused(settings))
    if output is OutputFormat.json:
        render.print_json(rows)
    else:
        render.paused_table(rows)


@app.command()
def budgets(output: Output = OutputFormat.table, bootstrap: Bootstrap = None) -> None:
    """Show each connection's fleet budget (rate, concurrent calls), blocks in force, and
    each worker's share of it by the partitions of export.requests it owns.

    Example: EXPORT_WORKER_CONNECTIONS_FILE=connections.toml export-worker budgets
    """
    from worker.ops import render
    from worker.ops.budgets import fleet_budgets

    settings = settings_from_env(kafka_bootstrap=bootstrap)
    connections = connection_configs(settings)
    if connections is None:
        raise fail("budgets reads the fleet's numbers from the connections file: set EXPORT_WORKER_CONNECTIONS_FILE", 2)
    report = run_async(fleet_budgets(settings, connections))
    if output is OutputFormat.json:
        render.print_json(report)
    else:
        render.budgets_tables(report)


@app.command()
def console(
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65_535, help="port to listen on; 0 picks a free one")] = 8090,
    connections: Connections = None,
    worker_metrics: Annotated[
        list[str] | None,
        typer.Option("--worker-metrics", help="a worker's /metrics URL for the fleet page (repeat for each worker)"),
    ] = None,
    index_dir: Annotated[
        Path | None, typer.Option(help="where the console keeps its index of the topics (default: a temporary dir)")
    ] = None,
    bootstrap: Bootstrap = None,
) -> None:
    """Web console for operators: fleet, jobs and their lineage, dead letters, pauses.

    Reads the topics only. Read-only unless EXPORT_WORKER_CONSOLE_TOKEN is set: then
    operators sign in with their name and that token to pause, resume and replay, and
    every action is logged with who did what.

    Example: export-worker console -c connections.toml --worker-metrics http://w1:8080/metrics
    """
    from worker.console.app import ConsoleOptions, serve
    from worker.observability import configure_logging

    settings = settings_from_env(kafka_bootstrap=bootstrap, connections_file=connections)
    configure_logging(settings.log_level, settings.log_format)
    options = ConsoleOptions(
        host=host,
        port=port,
        token=settings.console_token,
        connections_file=settings.connections_file,
        worker_metrics=tuple(worker_metrics or ()),
        index_dir=index_dir,
    )

    async def main() -> None:
        stop = stop_on_signals()
        async with serve(settings, options) as (started, url):
            err.print(f"console at {url} ({started.access_note})", soft_wrap=True)
            await stop.wait()

    run_async(main())


def main() -> None:
    try:
        app()
    except ExportWorkerError as exc:
        print_error(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
