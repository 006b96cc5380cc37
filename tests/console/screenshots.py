"""The README's console screenshots, from a real run: ``make demo``'s broker, simulators
and worker, and the console it starts, driven in Chromium.

    .venv/bin/python -m tests.console.screenshots [OUT_DIR]     (default docs/console)
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sys
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.console import browser
from tests.console.browser import Page, chromium


async def wait_line(process: asyncio.subprocess.Process, pattern: str, timeout: float) -> re.Match[str]:
    """The first line of the demo's output matching ``pattern``."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        raw = await asyncio.wait_for(process.stdout.readline(), max(0.1, deadline - time.monotonic()))
        if not raw:
            raise RuntimeError(f"the demo exited before printing {pattern!r}")
        line = raw.decode("utf-8", "replace")
        print(line, end="", file=sys.stderr)
        found = re.search(pattern, line)
        if found:
            return found
    raise TimeoutError(f"the demo did not print {pattern!r} within {timeout:.0f} s")


async def take(out: Path) -> None:
    token = secrets.token_hex(16)
    env = {**os.environ, "EXPORT_WORKER_CONSOLE_TOKEN": token, "COLUMNS": "200", "TERM": "dumb"}
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "demo", "--keep-running", "--console-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        url = (await wait_line(demo, r"Console at (http://\S+)", 180))[1]
        browser.ARTIFACTS = out
        async with chromium(url) as page:
            await page.open("/fleet")
            await page.wait_for(lambda d: re.search(r"Open jobs: [1-9]", d.page_source), "open jobs", 60)
            await page.screenshot("fleet")
            await wait_line(demo, r"valid requests SUCCEEDED", 120)
            await page.open("/jobs?tenant=acme")
            await page.screenshot("jobs")
            await page.open("/jobs?request_id=itron-")
            first = await page.find("tbody a[href^='/jobs/']")
            await page.call(first.click)
            await page.text_appears("#live", "SUCCEEDED")
            await page.screenshot("job")
            await sign_in(page, "alice", token)
            await page.open("/dead-letters")
            await page.screenshot("dead-letters")
            await page.call((await page.find("input[type=checkbox][name=position]")).click)
            await page.call((await page.find("#replay-form button[type=submit]")).click)
            await page.text_appears("h1", "Replay dead letters")
            await page.screenshot("replay-dry-run")
            await page.open("/pauses")
            await page.call((await page.by_label("Connection or vendor name")).send_keys, "unicommerce")
            reason = await page.by_label("Reason")
            await page.call(reason.send_keys, "vendor maintenance window until 14:00 UTC" + Keys.ENTER)
            await page.text_appears("[role=status]", "paused")
            await page.screenshot("pauses")
            assert page.driver.find_elements(By.CSS_SELECTOR, "main table")
    finally:
        demo.terminate()
        await asyncio.wait_for(demo.wait(), 60)


async def sign_in(page: Page, name: str, token: str) -> None:
    await page.open("/login")
    await page.call((await page.by_label("Your name")).send_keys, name)
    await page.call((await page.by_label("Console token")).send_keys, token + Keys.ENTER)
    await page.text_appears(".who", f"Signed in as {name}")


if __name__ == "__main__":
    asyncio.run(take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console")))
