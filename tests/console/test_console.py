"""The console against a real broker, a real worker and the Itron simulator: what its
pages show, who may act, and that its actions reach the fleet."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import itron_connection
from tests.console.conftest import (
    TOKEN,
    caught_up,
    client,
    console_running,
    dead_letter_for_a_missing_connection,
    indexed,
    info_logs,
)
from tests.ops.conftest import rid, submits, worker_running, write_connections
from worker.config import Settings
from worker.console import follow
from worker.console.follow import IndexThread
from worker.control import read_control
from worker.kafka import ensure_topics
from worker.redaction import redact_text
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, eventually, itron_request, terminal


async def test_search_finds_a_request_and_its_page_shows_the_whole_lineage(
    settings: Settings, itron_sim: ItronSimulator
) -> None:
    batch = rid("find")
    ours = [f"{batch}-{i}" for i in range(3)]
    other = rid("other")
    async with worker_running(settings, itron_sim), Publisher(settings) as pub, OutputReader(settings) as reader:
        for r in ours:
            await pub.send(itron_request(r, tenant="globex"))
        await pub.send(itron_request(other))
        await pub.flush()
        out = await reader.wait_for(lambda o: terminal(o, [*ours, other]), what="all terminal")
    target = ours[1]
    assert out.statuses(target)[-1] == "SUCCEEDED"
    raw_url = out.files_for(target)[0]["url"]
    assert "sig=" in raw_url  # the simulator signs its links: the console must mask that

    async with console_running(settings) as (console, url), client(url) as browser:
        await caught_up(console)
        await indexed(console, target, "SUCCEEDED")
        status, html = await browser.get(f"/jobs?request_id={batch}")
        assert status == 200
        found = re.findall(r'href="/jobs/([^"?]+)"', html)
        assert sorted(found) == sorted(ours) and other not in html

        status, html = await browser.get("/jobs?tenant=globex&status=SUCCEEDED")
        assert sorted(re.findall(r'href="/jobs/([^"?]+)"', html)) == sorted(ours)
        status, html = await browser.get("/jobs?since=2999-01-01")
        assert "No job matches" in html
        status, html = await browser.get("/jobs?since=yesterday-ish")
        assert status == 400 and "is not a time" in html

        lineage = await browser.json(f"/jobs/{target}?format=json")
        assert [e["status"] for e in lineage["statuses"]] == out.statuses(target)
        assert lineage["request"]["tenant"] == "globex" and lineage["vendor_job"]["status"] == "SUCCEEDED"
        assert lineage["vendor_job"]["vendor_job_id"] == out.events(target)[-1]["vendor_job_id"]
        assert [f["url"] for f in lineage["files"]] == [redact_text(raw_url)]
        status, html = await browser.get(f"/jobs/{target}")
        assert status == 200 and "SUCCEEDED" in html and lineage["vendor_job"]["vendor_job_id"] in html
        signature = re.search(r"sig=([^&]+)", raw_url)
        assert signature is not None and signature[1] not in html

        status, html = await browser.get("/jobs/no-such-request")
        assert status == 404 and "No topic knows this request" in html


async def test_a_read_only_console_refuses_every_action(settings: Settings) -> None:
    async with console_running(settings, token=None, create_topics=False) as (console, url), client(url) as browser:
        await eventually(lambda: console.follower.progress.missing_topics, what="topics missing")
        status, html = await browser.get("/fleet")
        assert status == 200 and f"waiting for {settings.topics.jobs}" in html
        await ensure_topics(settings)
        await caught_up(console)
        status, html = await browser.get("/pauses")
        assert status == 200 and "read-only" in html and 'action="/pauses"' not in html
        status, text = await browser.post("/pauses", {"target": "itron", "reason": "x", "csrf": "0"})
        assert status == 403 and "read-only" in text
        status, html = await browser.sign_in(token=TOKEN)
        assert status == 403 and "read-only" in html
        status, text = await browser.post("/dead-letters/replay", [("position", "0:0"), ("csrf", "0")])
        assert status == 403
    assert (await read_control(settings)) == {}


async def test_pause_and_resume_need_a_signed_in_operator_and_a_fresh_form(
    settings: Settings, itron_sim: ItronSimulator
) -> None:
    async with console_running(settings) as (console, url), client(url) as browser, client(url) as stranger:
        await caught_up(console)
        status, _ = await browser.post("/pauses", {"target": "itron", "reason": "x", "csrf": "0"})
        assert status == 403  # not signed in
        status, html = await browser.sign_in(token="wrong")
        assert status == 403 and "do not match" in html
        status, html = await browser.sign_in("alice")
        assert status == 200 and "Signed in as <strong>alice</strong>" in html
        csrf = await browser.csrf()

        status, text = await browser.post("/pauses", {"target": "itron", "reason": "x", "csrf": "f" * 64})
        assert status == 403 and "stale or forged" in text
        status, text = await browser.post(
            "/pauses", {"target": "itron", "reason": "x", "csrf": csrf}, origin="http://evil.example"
        )
        assert status == 403 and "cross-site" in text
        status, _ = await stranger.post("/pauses", {"target": "itron", "reason": "x", "csrf": csrf})
        assert status == 403  # the CSRF token alone is not a session
        assert (await read_control(settings)) == {}

        with info_logs() as logs:
            status, html = await browser.post(
                "/pauses",
                {
                    "target": "itron",
                    "kind": "connection",
                    "action": "pause",
                    "reason": "vendor maintenance",
                    "csrf": csrf,
                },
            )
        assert status == 200 and "connection:itron paused" in html
        assert re.search(r"connection itron</th><td>vendor maintenance</td><td>alice \(console\)", html)
        control = await read_control(settings)
        assert control["connection:itron"]["paused"] is True
        assert control["connection:itron"]["by"] == "alice (console)"
        audit = [e for e in logs if e["event"] == "console action"]
        assert audit == [
            {"event": "console action", "who": "alice", "action": "pause", "target": "connection:itron",
             "reason": "vendor maintenance", "result": "done", "log_level": "info"}
        ]  # fmt: skip
        assert all(TOKEN not in json.dumps(e, default=str) for e in logs)

        status, html = await browser.post(
            "/pauses", {"target": "itron", "kind": "connection", "action": "resume", "csrf": csrf}
        )
        assert status == 200 and "connection:itron resumed" in html and "Nothing is paused" in html
        assert (await read_control(settings))["connection:itron"]["paused"] is False

        status, html = await browser.post(
            "/pauses", {"target": "nope", "kind": "vendor", "action": "pause", "reason": "x", "csrf": csrf}
        )
        assert status == 400 and "unknown vendor" in html


async def test_a_dead_letter_is_replayed_after_its_connection_is_fixed(
    settings: Settings, itron_sim: ItronSimulator, tmp_path: Path
) -> None:
    r, connections = await dead_letter_for_a_missing_connection(settings, itron_sim, tmp_path)

    async with console_running(settings, connections_file=connections) as (console, url), client(url) as browser:
        await caught_up(console)
        await eventually(lambda: console.index.call(lambda i: i.dead_letters()), what="dead letter indexed")
        status, html = await browser.get("/dead-letters")
        assert status == 200 and "unknown_connection" in html and r in html
        assert 'type="checkbox"' not in html  # not signed in: nothing to select
        await browser.sign_in("bob")
        _status, html = await browser.get("/dead-letters?reason=unknown_connection")
        positions = re.findall(r'name="position" value="(\d+:\d+)"', html)
        assert len(positions) == 1
        csrf = await browser.csrf("/dead-letters")

        status, html = await browser.post("/dead-letters/check", [("position", positions[0]), ("csrf", csrf)])
        assert status == 200 and "still invalid: unknown_connection" in html

        fixed = {name: itron_connection(itron_sim.base_url) for name in ("itron", "itron-eu")}
        write_connections(connections, fixed)
        status, html = await browser.post("/dead-letters/check", [("position", positions[0]), ("csrf", csrf)])
        assert status == 200 and "accepted now (was unknown_connection): resubmit" in html
        assert re.findall(r'type="hidden" name="position" value="(\d+:\d+)"', html) == positions
        plan = re.search(r'name="plan" value="([0-9a-f]+)"', html)
        assert plan is not None
        confirm = [("position", positions[0]), ("csrf", csrf), ("plan", plan[1])]

        # The confirm replays exactly what the dry run showed: not without it, not more.
        p, o = map(int, positions[0].split(":"))
        other = f"{p}:{o + 1}"
        for forged in ([("position", positions[0]), ("csrf", csrf)],
                       [*confirm, ("position", other)],
                       [("position", positions[0]), ("csrf", csrf), ("plan", "0" * 64)]):  # fmt: skip
            status, html = await browser.post("/dead-letters/replay", forged)
            assert status == 400 and "not the one its dry run showed" in html
        status, html = await browser.post("/dead-letters/check", [("position", f"{p}:{o + 10_000}"), ("csrf", csrf)])
        assert status == 400 and f"not in {settings.topics.dlq} (any more): {p}:{o + 10_000}" in html

        posts = submits(itron_sim)
        async with worker_running(settings, itron_sim, "itron", "itron-eu"), OutputReader(settings) as reader:
            with info_logs() as logs:
                status, html = await browser.post("/dead-letters/replay", confirm)
            assert status == 200 and "Replayed 1 of 1" in html
            out = await reader.wait_for(lambda o: o.statuses(r)[-1:] == ["SUCCEEDED"], what="replayed request done")
            status, html = await browser.post("/dead-letters/replay", confirm)  # the form sent again
            assert status == 400 and "this replay already ran (replayed 1 of 1)" in html
        assert out.statuses(r)[0] == "REJECTED" and submits(itron_sim) == posts + 1
        assert [(e["who"], e["action"], e["target"], e["result"]) for e in logs if e["event"] == "console action"] == [
            ("bob", "dead-letter replay", positions[0], "replayed 1 of 1")
        ]
        await indexed(console, r, "SUCCEEDED")
        status, html = await browser.post("/dead-letters/check", [("position", "nonsense"), ("csrf", csrf)])
        assert status == 400 and "is not PARTITION:OFFSET" in html


async def test_fleet_page_counts_open_jobs_dead_letters_and_reads_worker_metrics(
    settings: Settings, itron_sim: ItronSimulator
) -> None:
    side = settings.model_copy(update={"http_port": 0, "http_host": "127.0.0.1"})
    async with worker_running(side, itron_sim) as worker, Publisher(settings) as pub, OutputReader(settings) as reader:
        await pub.raw(b"not avro at all", key=b"junk")
        await pub.send(itron_request(rid("done")))
        await pub.flush()
        await reader.wait_for(lambda o: len(o.dlq) == 1 and "SUCCEEDED" in o.last_status().values(), what="done")
        metrics = f"http://127.0.0.1:{worker.side_port.port}/metrics"
        unreachable = "http://127.0.0.1:9/metrics"
        async with (
            console_running(settings, worker_metrics=(metrics, unreachable)) as (console, url),
            client(url) as browser,
        ):
            await caught_up(console)
            await eventually(lambda: console.fleet.snapshot.workers, what="a scrape")
            status, html = await browser.get("/fleet")
            assert status == 200
            assert re.search(r'href="/dead-letters\?reason=not_avro">not_avro</a></th><td class="num">1<', html)
            assert metrics in html and "unreachable" in html
            assert re.search(rf"{re.escape(metrics)}</th>\s*<td class=\"num\">3</td>", html)  # 3 partitions
            assert "requests not yet read" in html and "No open jobs." in html
            status, fragment = await browser.get("/fleet?fragment=1")
            assert status == 200 and "<html" not in fragment and "not_avro" in fragment


async def test_the_token_typed_as_a_name_is_never_kept_shown_or_logged(settings: Settings) -> None:
    async with console_running(settings) as (_console, url), client(url) as browser:
        with info_logs() as logs:
            status, html = await browser.sign_in(name=f"me {TOKEN}", token=TOKEN)
        assert status == 403 and "holds the console token" in html and TOKEN not in html
        assert TOKEN not in json.dumps(logs, default=str)
        assert not browser.session.cookie_jar.filter_cookies(url)  # not signed in


async def test_forms_that_act_are_checked_on_the_server(settings: Settings) -> None:
    async with console_running(settings) as (console, url), client(url) as browser:
        await caught_up(console)
        await browser.sign_in("dave")
        csrf = await browser.csrf()
        status, html = await browser.post("/pauses", {"target": "itron", "action": "pause", "csrf": csrf})
        assert status == 400 and "say why you pause it" in html
        status, html = await browser.post(
            "/pauses", {"target": "itron", "action": "explode", "reason": "x", "csrf": csrf}
        )
        assert status == 400 and "names no action" in html
        status, html = await browser.post(
            "/pauses", {"target": "itron", "action": "pause", "reason": "two\nlines\x1b[31m", "csrf": csrf}
        )
        assert status == 200
        assert (await read_control(settings))["connection:itron"]["reason"] == "twolines[31m"
        status, html = await browser.post("/dead-letters/check", [("csrf", csrf)])
        assert status == 400 and "select between 1 and 500 dead letters" in html
        status, html = await browser.get("/jobs?before=%C2%B2%C2%B2:x")  # superscript digits are not digits
        assert status == 400 and "not a page cursor" in html
        status, html = await browser.get("/jobs?since=-" + "9" * 400 + "d")
        assert status == 400 and "is not a time" in html


async def test_a_loopback_console_answers_only_to_localhost(settings: Settings) -> None:
    async with console_running(settings) as (_console, url), client(url) as browser:
        async with browser.session.get(url + "/fleet", headers={"Host": "attacker.example"}) as response:
            assert response.status == 421 and response.headers["X-Content-Type-Options"] == "nosniff"
        async with browser.session.get(url + "/healthz", headers={"Host": "localhost:1234"}) as response:
            assert response.status == 200 and (await response.json())["ok"] is True
        async with browser.session.get(url + "/login") as response:
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


async def test_the_index_reads_everything_again_after_a_failure(
    settings: Settings, itron_sim: ItronSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = rid("done")
    async with worker_running(settings, itron_sim), Publisher(settings) as pub, OutputReader(settings) as reader:
        await pub.send(itron_request(done))
        await pub.flush()
        await reader.wait_for(lambda o: terminal(o, [done]), what="done")
    original = IndexThread.call
    failures = []

    async def fail_once(self: IndexThread, fn: Any) -> Any:
        if not failures:
            failures.append(fn)
            raise OSError("disk full (injected)")
        return await original(self, fn)

    monkeypatch.setattr(IndexThread, "call", fail_once)
    monkeypatch.setattr(follow, "RESTART_MIN_S", 0.05)
    async with console_running(settings) as (console, url), client(url) as browser:
        await eventually(lambda: console.follower.progress.restarts == 1, what="a restart")
        await indexed(console, done, "SUCCEEDED")
        await caught_up(console)
        assert console.follower.progress.error is None
        health = await browser.json("/healthz")
        assert health["ok"] is True and health["index"]["restarts"] == 1
