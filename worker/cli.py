"""``export-worker``: thin commands that parse flags, build settings, and call one function."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from worker.config import Settings
from worker.errors import ExportWorkerError

app = typer.Typer(
    name="export-worker",
    help="Kafka workers that run vendor export jobs: submit, poll, announce files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def settings_from_env(**overrides: Any) -> Settings:
    """The only place the environment is read."""
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**values)
    except Exception as exc:  # pydantic ValidationError
        raise typer.BadParameter(str(exc)) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def run_async(coro: Any) -> Any:
    """Run a coroutine; known errors become one clear line and exit code 1."""
    from worker.kafka import BrokerUnavailable

    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (ExportWorkerError, BrokerUnavailable) as exc:
        raise fail(str(exc)) from None


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
    from worker.observability import configure_logging
    from worker.runtime import Worker

    settings = settings_from_env(connections_file=connections, kafka_bootstrap=bootstrap, http_port=http_port)
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = Worker(settings)
        await worker.run(stop)

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
            sim = simulators.simulator_class(vendor)(timing=Timing(stages=(stage_seconds,) * 3), faults=plan)
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
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
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
) -> None:
    """Start Kafka (embedded unless KAFKA_BOOTSTRAP is set), the vendor simulators and a worker,
    publish sample requests and show them reaching file-ready in a live table.

    Example: make demo   (or: KAFKA_BOOTSTRAP=localhost:9092 export-worker demo)
    """
    from worker.demo import run_demo

    ok = run_async(run_demo(requests_per_vendor=requests_per_vendor, timeout=timeout))
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    try:
        app()
    except ExportWorkerError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
