"""Topic set-up against the real broker: workers started together on a fresh cluster all
come up (a peer creating the topics is waited for, not an exit), and an error retrying
cannot fix fails at once with a message that says what to change."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka.admin import ConfigResource

from worker.config import Settings, TopicSettings
from worker.errors import ConfigError
from worker.kafka import admin_client, ensure_topics


def fresh(settings: Settings, **changes: object) -> Settings:
    topics = TopicSettings(partitions=3, **changes).prefixed(f"t{uuid.uuid4().hex[:10]}.")  # type: ignore[arg-type]
    return settings.model_copy(update={"topics": topics})


class TestConcurrentStart:
    async def test_workers_ensuring_the_same_fresh_topics_together_all_succeed(self, settings: Settings) -> None:
        """Six starts at once, each with its own admin client, as separate workers would."""
        settings = fresh(settings)
        results = await asyncio.gather(*(ensure_topics(settings, admin_client(settings)) for _ in range(6)))
        t = settings.topics
        expected = {t.requests: 3, t.status: 3, t.files: 3, t.jobs: 3, t.dlq: 3, t.control: 1}
        assert all(result == expected for result in results)
        admin = admin_client(settings)
        configs = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t.jobs)])
        (future,) = configs.values()
        assert future.result(30)["cleanup.policy"].value == "compact"

    async def test_a_start_after_the_topics_exist_keeps_them(self, settings: Settings) -> None:
        settings = fresh(settings)
        first = await ensure_topics(settings, admin_client(settings))
        assert await ensure_topics(settings, admin_client(settings)) == first


class TestErrorsRetryingCannotFix:
    async def test_an_impossible_replication_factor_fails_at_once_and_names_the_setting(
        self, settings: Settings
    ) -> None:
        settings = fresh(settings, replication_factor=5)  # the embedded cluster has one broker
        started = time.monotonic()
        with pytest.raises(ConfigError, match="EXPORT_WORKER_TOPICS__REPLICATION_FACTOR"):
            await ensure_topics(settings, admin_client(settings), ready_s=60)
        assert time.monotonic() - started < 30  # did not wait out the deadline

    async def test_missing_topics_with_creation_off_fail_at_once(self, settings: Settings) -> None:
        settings = fresh(settings, create=False)
        with pytest.raises(ConfigError, match="topic creation is off"):
            await ensure_topics(settings, admin_client(settings))
