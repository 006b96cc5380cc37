"""The mailbox the loop waits on while background work is under way: a report or a
``wake()`` ends the wait at once, without taking anything from the queue."""

from __future__ import annotations

import asyncio
import time

from worker.control import ControlState
from worker.runtime.mailbox import ControlChanged, Mailbox

# Far longer than any wake-up takes: a wait that lasts this long was not woken.
NEVER_S = 30.0


def report() -> ControlChanged:
    return ControlChanged(ControlState(frozenset()))


class TestMailboxWait:
    async def test_a_report_ends_the_wait_and_stays_in_the_queue(self) -> None:
        mailbox = Mailbox()
        waiting = asyncio.create_task(mailbox.wait(NEVER_S))
        await asyncio.sleep(0)  # the wait is under way
        assert not waiting.done()
        sent = report()
        mailbox.put_nowait(sent)
        await asyncio.wait_for(waiting, 5)
        assert mailbox.get_nowait() is sent

    async def test_wake_ends_the_wait_with_nothing_queued(self) -> None:
        mailbox = Mailbox()
        waiting = asyncio.create_task(mailbox.wait(NEVER_S))
        await asyncio.sleep(0)
        assert not waiting.done()
        mailbox.wake()
        await asyncio.wait_for(waiting, 5)
        assert mailbox.empty()

    async def test_a_report_already_waiting_or_no_time_means_no_wait(self) -> None:
        mailbox = Mailbox()
        await asyncio.wait_for(mailbox.wait(0), 5)
        mailbox.put_nowait(report())
        await asyncio.wait_for(mailbox.wait(NEVER_S), 5)

    async def test_without_reports_the_wait_ends_at_its_timeout(self) -> None:
        mailbox = Mailbox()
        started = time.monotonic()
        await asyncio.wait_for(mailbox.wait(0.05), 5)
        assert time.monotonic() - started >= 0.04
        mailbox.wake()  # no wait under way: nothing to end, nothing raised
        await asyncio.wait_for(mailbox.wait(0.01), 5)  # an earlier wake is not remembered

    async def test_a_put_through_the_awaitable_api_wakes_too(self) -> None:
        mailbox = Mailbox()
        waiting = asyncio.create_task(mailbox.wait(NEVER_S))
        await asyncio.sleep(0)
        await mailbox.put(report())
        await asyncio.wait_for(waiting, 5)

    async def test_reports_need_not_wake_but_wake_still_does(self) -> None:
        """Answers nobody waits for (no call queued for a slot) are taken together at the
        end of the wait; a finished transaction still ends it at once."""
        mailbox = Mailbox()
        mailbox.put_nowait(report())  # already queued: no reason to stop waiting either
        waiting = asyncio.create_task(mailbox.wait(NEVER_S, reports_wake=False))
        await asyncio.sleep(0)
        mailbox.put_nowait(report())
        await asyncio.sleep(0)
        assert not waiting.done()
        mailbox.wake()
        await asyncio.wait_for(waiting, 5)
        assert mailbox.qsize() == 2
        # the next wait is woken by reports again
        waiting = asyncio.create_task(mailbox.wait(NEVER_S))
        await asyncio.wait_for(waiting, 5)  # a report is already waiting
