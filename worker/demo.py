"""``export-worker demo``: Kafka + vendor simulators + one worker + sample requests,
with a live table of statuses until every request is terminal."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from worker import simulators
from worker.config import ConnectionConfig, PolicyConfig, Settings, TopicSettings
from worker.observability import configure_logging
from worker.output_reader import Output, OutputReader
from worker.publisher import Publisher
from worker.result_store import FileResultStore
from worker.runtime import Worker
from worker.signals import stop_on_signals
from worker.simulators.base import Timing

console = Console()
DEMO_POLICY = PolicyConfig(first_poll_s=0.5, poll_initial_s=0.5, poll_multiplier=1.5, poll_max_s=2.0)
COLORS = {"SUCCEEDED": "green", "FAILED": "red", "REJECTED": "red", "CANCELLED": "yellow", "EXPIRED": "yellow"}


def _table(expected: dict[str, str], out: Output, started: float) -> Table:
    table = Table(title=f"export-worker demo - {time.monotonic() - started:.1f} s")
    table.add_column("request", no_wrap=True)
    for column in ("status", "seq"):
        table.add_column(column, no_wrap=True)
    table.add_column("vendor job", no_wrap=True, max_width=10)
    table.add_column("file / reason", no_wrap=True)
    last: dict[str, dict[str, Any]] = {}
    for event in out.status:
        last[event["request_id"]] = event
    for rid in expected:
        event = last.get(rid, {})
        status = event.get("status", "-")
        files = out.files_for(rid)
        file = ""
        if files:
            f = files[-1]
            expires = f["expires_at"].strftime("%Y-%m-%d") if f["expires_at"] else "?"
            size = f" {f['size_bytes']}B" if f["size_bytes"] is not None else ""
            file = f"{f['format']}{size} exp {expires}"
        elif event.get("error"):
            file = f"[dim]{event['error']['code']}[/dim]"
        color = COLORS.get(status, "cyan")
        job = (event.get("vendor_job_id") or "")[:18]
        table.add_row(rid, f"[{color}]{status}[/{color}]", str(event.get("sequence", "")), job, file)
    return table


def _invalid_request() -> dict[str, Any]:
    """An Itron request for data older than the 13 months Itron keeps: REJECTED, dead-lettered."""
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=800)).date().isoformat()
    return {
        "request_id": f"itron-too-old-{uuid.uuid4().hex[:4]}",
        "tenant": "acme",
        "connection": "itron",
        "requested_at": dt.datetime.now(dt.UTC),
        "correlation_id": None,
        "labels": {"demo": "invalid"},
        "job": ("export.v1.ItronBatchRequest", {"filetype": "Csv", "tokens": {"StartEventDate": old}}),
        "replay_of": None,
    }


def demo_settings(bootstrap: str, topics: TopicSettings, workdir: Path) -> Settings:
    """The demo worker's settings: its stores under ``workdir``, never the current directory."""
    return Settings(
        kafka_bootstrap=bootstrap,
        topics=topics,
        group_id="export-worker-demo",
        instance_id=f"demo-{uuid.uuid4().hex[:6]}",
        http_port=0,
        commit_interval_ms=50,
        state_dir=(workdir / "state").resolve(),
    )


async def start_console(stack: AsyncExitStack, settings: Settings, port: int) -> None:
    """The operators' console on ``port`` (a free one when taken), until the demo ends."""
    from worker.console.app import ConsoleOptions, serve

    for candidate in (port, 0):
        options = ConsoleOptions(port=candidate, token=settings.console_token)
        try:
            started, url = await stack.enter_async_context(serve(settings, options))
        except OSError:  # the port is taken: any free one
            continue
        console.print(f"Console at [bold]{url}[/bold] ({started.access_note})")
        return


async def run_demo(
    *, requests_per_vendor: int = 3, timeout: float = 120.0, console_port: int = 8090, keep_running: bool = False
) -> bool:
    configure_logging("error", "console")
    started = time.monotonic()
    workdir = Path(".demo")
    async with AsyncExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP") or os.environ.get("EXPORT_WORKER_KAFKA_BOOTSTRAP")
        topics = TopicSettings(partitions=3)
        if bootstrap:
            console.print(f"Using the Kafka cluster at [bold]{bootstrap}[/bold]; topics are prefixed 'demo.'")
            topics = topics.prefixed("demo.")
        else:
            from worker.embedded import KAFKA_VERSION, EmbeddedKafka

            console.print(f"Starting Apache Kafka {KAFKA_VERSION} (embedded, KRaft) ...")
            broker = EmbeddedKafka()
            bootstrap = await asyncio.to_thread(broker.start)
            stack.callback(broker.close)
            console.print(f"Kafka is up at [bold]{bootstrap}[/bold] ({time.monotonic() - started:.1f} s)")

        connections: dict[str, ConnectionConfig] = {}
        samples: dict[str, tuple[str, dict[str, Any]]] = {}
        for vendor in simulators.available():
            sim = simulators.simulator_class(vendor)(timing=Timing(stages=(1.0, 1.0, 1.0)), seed=1)
            url = await sim.start()
            stack.push_async_callback(sim.stop)
            module = simulators.module(vendor)
            connections[vendor] = module.demo_connection(url).model_copy(update={"policy": DEMO_POLICY})
            samples[vendor] = module.sample_job()
            console.print(f"{vendor} simulator at {url}")

        settings = demo_settings(bootstrap, topics, workdir)
        worker = Worker(settings, connections=connections, result_store=FileResultStore(workdir / "results"))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))

        async def shutdown() -> None:
            stop.set()
            await asyncio.wait_for(task, 60)

        stack.push_async_callback(shutdown)
        if console_port >= 0:
            await start_console(stack, settings, console_port)

        expected: dict[str, str] = {}
        run_id = uuid.uuid4().hex[:4]
        async with Publisher(settings) as pub:
            for vendor, (job_type, job) in samples.items():
                for i in range(requests_per_vendor):
                    rid = f"{vendor}-{run_id}-{i + 1}"
                    expected[rid] = vendor
                    await pub.send(
                        {
                            "request_id": rid,
                            "tenant": "acme",
                            "connection": vendor,
                            "requested_at": dt.datetime.now(dt.UTC),
                            "correlation_id": None,
                            "labels": {"demo": run_id},
                            "job": (job_type, job),
                            "replay_of": None,
                        }
                    )
            invalid = _invalid_request()
            expected[invalid["request_id"]] = "itron"
            await pub.send(invalid)
            await pub.flush()
        console.print(f"Published {len(expected)} requests ({len(expected) - 1} valid, 1 invalid on purpose)")

        deadline = time.monotonic() + timeout
        ok = False
        async with OutputReader(settings, include_jobs=False) as reader:
            with Live(_table(expected, Output(), started), console=console, refresh_per_second=4) as live:
                while time.monotonic() < deadline:
                    if task.done():
                        task.result()
                    out = await reader.read()
                    live.update(_table(expected, out, started))
                    last = out.last_status()
                    valid = [r for r in expected if r != invalid["request_id"]]
                    done = all(last.get(r) == "SUCCEEDED" and out.files_for(r) for r in valid)
                    if done and last.get(invalid["request_id"]) == "REJECTED":
                        ok = True
                        break
                    await asyncio.sleep(0.25)
            dlq = len(out.dlq)
        elapsed = time.monotonic() - started
        if ok:
            console.print(
                f"[green]All {len(expected) - 1} valid requests SUCCEEDED with a file announced; "
                f"the invalid one was REJECTED and dead-lettered ({dlq} DLQ record). {elapsed:.1f} s[/green]"
            )
        else:
            console.print(f"[red]Not every request finished within {timeout:.0f} s[/red]")
        if keep_running:
            console.print("Broker, simulators, worker and console keep running: Ctrl-C to stop.")
            await stop_on_signals().wait()
        return ok
