"""The worker runtime: a composition root (``Worker``) and one collaborator per job.

- ``Worker``: wiring, lifecycle and the turn script; rebalance callbacks delegate.
- ``Intake``: consumed requests become engine steps, or dead letters.
- ``Stepper``: one engine step for one job, its effects handed on.
- ``CallDispatcher``: timers, per-connection lanes (limits, queues, pause), calls in flight.
- ``calls``: running one vendor call; how it failed, as an engine event.
- ``Outbox``: records and states waiting for the next transaction, calls waiting on it.
- ``TransactionWriter``: cutting and writing batches in Kafka transactions; how each ended.
- ``Partitions``: ownership and incarnations of the request partitions.
- ``Restorer``: reading a partition's state back, committed offsets, resync.
- ``LoopWatchdog``: health, stall stacks, consumer lag.
- ``IntakeGate``: backpressure, reading requests paused while too many jobs are open.
- ``clients``: the seams, Kafka client factories and the clock.
"""

from __future__ import annotations

from worker.errors import ProducerStuck, WorkerFenced
from worker.runtime.clients import Clock, ConsumerFactory, GroupConsumer, ProducerFactory, TransactionalProducer
from worker.runtime.connections import Connection, build_connections, load_connection_configs
from worker.runtime.transactions import Batch, Outcome, Settled
from worker.runtime.worker import Worker

__all__ = [
    "Batch",
    "Clock",
    "Connection",
    "ConsumerFactory",
    "GroupConsumer",
    "Outcome",
    "ProducerFactory",
    "ProducerStuck",
    "Settled",
    "TransactionalProducer",
    "Worker",
    "WorkerFenced",
    "build_connections",
    "load_connection_configs",
]
