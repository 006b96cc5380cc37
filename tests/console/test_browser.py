"""The console in a real browser (Debian's chromium and chromedriver, selenium), against
a real broker, a real worker and the Itron simulator: what an operator does with it."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.common.keys import Keys

from tests.conftest import itron_connection
from tests.console.browser import Page, chromium
from tests.console.conftest import TOKEN, caught_up, console_running, dead_letter_for_a_missing_connection, indexed
from tests.ops.conftest import rid, worker_running, write_connections
from worker.config import Settings
from worker.control import read_control
from worker.simulators.itron import ItronSimulator
from worker.testing import OutputReader, Publisher, itron_request, terminal


async def sign_in(page: Page, name: str) -> None:
    await page.open("/login")
    await page.call((await page.by_label("Your name")).send_keys, name)
    token = await page.by_label("Console token")
    await page.call(token.send_keys, TOKEN + Keys.ENTER)
    await page.text_appears(".who", f"Signed in as {name}")


async def test_an_operator_finds_a_request_and_follows_its_lineage(
    settings: Settings, itron_sim: ItronSimulator
) -> None:
    wanted, other = rid("wanted"), rid("other")
    async with worker_running(settings, itron_sim), Publisher(settings) as pub, OutputReader(settings) as reader:
        for r in (wanted, other):
            await pub.send(itron_request(r))
        await pub.flush()
        out = await reader.wait_for(lambda o: terminal(o, [wanted, other]), what="both done")
        async with console_running(settings) as (console, url), chromium(url) as page:
            await caught_up(console)
            await indexed(console, wanted, "SUCCEEDED")
            await page.open("/fleet")
            assert "No dead letters." in await page.text()

            # A bad record arrives while the fleet page is open: the page shows it by itself.
            await pub.raw(b"definitely not avro", key=b"junk")
            await pub.flush()
            await page.text_appears("#live", "not_avro")
            await page.screenshot("fleet")

            await page.call((await page.find("nav a[href='/jobs']")).click)
            field = await page.by_label("Request id (or its start)")
            await page.call(field.send_keys, wanted + Keys.ENTER)
            await page.text_appears("table caption", "Jobs, latest update first")
            # The list page before the search has the same caption: wait for the search's
            # answer itself, its links found and read in one script (an element found by
            # one call can be gone by the next, the page having moved on meanwhile).
            listed = "return [...document.querySelectorAll(\"tbody a[href^='/jobs/']\")].map(e => e.innerText)"
            await page.wait_for(lambda driver: driver.execute_script(listed) == [wanted], f"only {wanted} listed")
            await page.screenshot("jobs")
            await page.script("document.querySelector(\"tbody a[href^='/jobs/']\").click()")

            await page.text_appears("h1", wanted)
            text = await page.text()
            vendor_job = out.events(wanted)[-1]["vendor_job_id"]
            assert vendor_job in text and "Status changes" in text
            sequences = await page.script(
                "return [...document.querySelectorAll('#changes ~ table tbody th[scope=row]')].map(e => e.innerText)"
            )
            assert sequences == [str(n) for n in range(1, len(out.statuses(wanted)) + 1)]
            signature = out.files_for(wanted)[0]["url"].split("sig=", 1)[1].split("&", 1)[0]
            assert "sig=***" in text and signature not in text
            await page.screenshot("job")


async def test_an_operator_replays_a_dead_letter_after_fixing_its_connection(
    settings: Settings, itron_sim: ItronSimulator, tmp_path: Path
) -> None:
    r, connections = await dead_letter_for_a_missing_connection(settings, itron_sim, tmp_path)

    async with console_running(settings, connections_file=connections) as (console, url), chromium(url) as page:
        await caught_up(console)
        await sign_in(page, "bob")

        async def dry_run() -> str:
            await page.open("/dead-letters")
            box = await page.find("input[type=checkbox][name=position]")
            await page.call(box.click)
            await page.call((await page.find("#replay-form button[type=submit]")).click)
            await page.text_appears("h1", "Replay dead letters")
            return str(await page.text("table"))

        assert "still invalid: unknown_connection: no connection named 'itron-eu'" in await dry_run()
        await page.screenshot("replay-still-invalid")

        write_connections(connections, {n: itron_connection(itron_sim.base_url) for n in ("itron", "itron-eu")})
        assert "accepted now (was unknown_connection): resubmit" in await dry_run()
        await page.screenshot("replay-dry-run")

        async with worker_running(settings, itron_sim, "itron", "itron-eu"):
            await page.call((await page.find("#confirm-replay")).click)
            await page.text_appears("main", "Replayed 1 of 1")
            await page.open(f"/jobs/{r}")
            await page.text_appears("#live", "SUCCEEDED", timeout=60)  # live updates, no reload
        assert "REJECTED" in await page.text("#live")
        await page.screenshot("job-after-replay")


async def test_an_operator_pauses_and_resumes_a_connection_with_the_keyboard(settings: Settings) -> None:
    async with console_running(settings) as (console, url), chromium(url) as page:
        await caught_up(console)
        await page.open("/fleet")
        # The first Tab reaches the skip link, which moves focus to the page's content.
        await page.call((await page.find("body")).send_keys, Keys.TAB)
        assert await page.script("return document.activeElement.textContent") == "Skip to content"
        await page.call(page.driver.switch_to.active_element.send_keys, Keys.ENTER)
        assert await page.script("return document.activeElement.id") == "main"

        await sign_in(page, "carol")
        await page.open("/pauses")
        unlabelled = await page.script(
            """return [...document.querySelectorAll('input:not([type=hidden]), select, button')]
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
                 .map(e => e.outerHTML)"""
        )
        assert unlabelled == []

        target = await page.by_label("Connection or vendor name")
        await page.call(target.send_keys, "itron")
        await page.call(page.driver.switch_to.active_element.send_keys, Keys.TAB)  # to the radio group
        await page.call(page.driver.switch_to.active_element.send_keys, Keys.TAB)  # to the reason
        assert await page.script("return document.activeElement.id") == "pause-reason"
        await page.call(page.driver.switch_to.active_element.send_keys, "vendor maintenance" + Keys.ENTER)
        await page.text_appears("[role=status]", "connection:itron paused")
        assert "connection itron" in await page.text("table") and "carol (console)" in await page.text("table")
        await page.screenshot("pauses")
        control = await read_control(settings)
        assert control["connection:itron"]["paused"] is True and control["connection:itron"]["by"] == "carol (console)"

        await page.call((await page.find("button[aria-label='Resume connection itron']")).click)
        await page.text_appears("main", "Nothing is paused")
        assert (await read_control(settings))["connection:itron"]["paused"] is False
