"""What ``AdminClient.list_topics`` answers, for the fake admin clients of unit tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError


@dataclass
class Partition:
    leader: int


@dataclass
class Topic:
    partitions: dict[int, Any]
    error: KafkaError | None = None


@dataclass
class Metadata:
    topics: dict[str, Topic]
