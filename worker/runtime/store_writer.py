"""Committed job states into the partition stores, and finished jobs out of memory
(design state-store §3.4).

Called with each committed batch, before its vendor calls start: the store is written
only with what Kafka already holds, so it is never ahead of the topic, and a finished
job leaves memory only once the store has its state. Invariant: for every owned, ready
partition, a job is in memory, or its latest committed state is in the store, or it
does not exist.
"""

from __future__ import annotations

import structlog

from worker.observability import Metrics
from worker.runtime.outbox import Outgoing
from worker.runtime.partitions import Partitions
from worker.runtime.stepper import Stepper
from worker.runtime.transactions import Batch
from worker.store import Entry, StoreError

log = structlog.get_logger("export_worker")


class StoreWriter:
    def __init__(self, *, partitions: Partitions, stepper: Stepper, jobs_topic: str, metrics: Metrics) -> None:
        self._partitions = partitions
        self._stepper = stepper
        self._jobs_topic = jobs_topic
        self._metrics = metrics

    def committed(self, batch: Batch) -> set[int]:
        """Fold ``batch``'s export.jobs records into their partitions' stores and evict
        the finished jobs it wrote. Returns the partitions whose store failed: their
        stores can no longer be believed, and they must be rebuilt."""
        by_partition: dict[int, list[Outgoing]] = {}
        for out in batch.outgoing:
            if out.topic == self._jobs_topic:
                by_partition.setdefault(out.partition, []).append(out)
        failed: set[int] = set()
        for number, written in by_partition.items():
            part = self._partitions.current(number, batch.incarnations.get(number))
            end = batch.jobs_offsets.get(number)
            store = self._stepper.store_of(part) if part is not None else None
            if part is None or store is None or end is None:
                continue  # moved on: its next owner (or restore) reads these records from the topic
            entries = [
                Entry(
                    out.key,
                    out.value,
                    out.state is not None and out.state.open,
                    out.state.next_action_at_ms if out.state is not None else 0,
                )
                for out in written
            ]
            try:
                store.apply(entries, end)
            except StoreError as exc:
                self._metrics.store_failures.inc()
                log.error("partition store write failed; rebuilding it", partition=number, error=str(exc))
                failed.add(number)
                continue
            for out in written:
                state = out.state
                # Only the very state written: a job stepped again since stays until its
                # newer state is committed.
                if state is None or part.jobs.get(state.request_id) is not state:
                    continue
                if state.open:
                    part.jobs[state.request_id] = self._stepper.trimmed(number, state)
                else:
                    del part.jobs[state.request_id]
        return failed
