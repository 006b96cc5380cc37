"""Topic set-up decisions without a broker: which admin errors are waited out (a peer
creating the topics, metadata still reaching every broker of a fresh cluster) and which
fail at once. An admin double stands in for the cluster here because a single embedded
broker never shows a topic known to one broker and unknown to another; the real broker
tests are in tests/integration/test_topics.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigEntry

from tests.unit.fake_metadata import Metadata, Topic
from worker.config import Settings, TopicSettings
from worker.errors import ConfigError
from worker.kafka import BrokerUnavailable, ensure_topics, transient_admin_error

SETTINGS = Settings(kafka_bootstrap="127.0.0.1:1", topics=TopicSettings(partitions=3), http_port=-1)
T = SETTINGS.topics
ALL = [T.requests, T.status, T.files, T.jobs, T.dlq, T.control]


def done(value: Any = None, error: int | None = None) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(KafkaException(KafkaError(error)))
    return future


@dataclass
class Cluster:
    """What one broker of a fresh cluster answers while a peer worker creates the topics.

    Args:
        visible_after: list_topics calls before the topics show in this broker's metadata.
        describe_errors: errors describe_configs answers first, in order.
    """

    visible_after: int = 0
    unreachable_for: int = 0  # list_topics calls that fail first, as while the broker is down
    describe_errors: list[int] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    listed: int = 0
    described: int = 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Metadata:
        self.listed += 1
        if self.listed <= self.unreachable_for:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Broker transport failure"))
        if self.listed <= self.visible_after:
            return Metadata({})
        counts = {name: (1 if name == T.control else 3) for name in ALL}
        return Metadata({name: Topic(dict.fromkeys(range(n))) for name, n in counts.items()})

    def create_topics(self, new: list[Any], operation_timeout: float) -> dict[str, Any]:
        self.created += [t.topic for t in new]
        return {t.topic: done(error=KafkaError.TOPIC_ALREADY_EXISTS) for t in new}  # the peer won

    def describe_configs(self, resources: list[Any]) -> dict[Any, Any]:
        self.described += 1
        if self.describe_errors:
            return {resources[0]: done(error=self.describe_errors.pop(0))}
        return {resources[0]: done({"cleanup.policy": ConfigEntry("cleanup.policy", "compact")})}


def ensure(cluster: Cluster, ready_s: float = 60) -> dict[str, int]:
    return asyncio.run(ensure_topics(SETTINGS, cluster, ready_s=ready_s))  # type: ignore[arg-type]


class TestRetryDecision:
    @pytest.mark.parametrize(
        "code",
        [
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError.LEADER_NOT_AVAILABLE,
            KafkaError.NOT_CONTROLLER,
            KafkaError.REQUEST_TIMED_OUT,
            KafkaError._TIMED_OUT,
            KafkaError._TRANSPORT,
        ],
    )
    def test_errors_of_a_topic_still_being_created_or_a_moving_cluster_are_waited_out(self, code: int) -> None:
        assert transient_admin_error(KafkaError(code))

    @pytest.mark.parametrize(
        "code",
        [
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            KafkaError.INVALID_REPLICATION_FACTOR,
            KafkaError.POLICY_VIOLATION,
            KafkaError.INVALID_CONFIG,
        ],
    )
    def test_errors_retrying_cannot_fix_are_not(self, code: int) -> None:
        assert not transient_admin_error(KafkaError(code))


class TestFreshCluster:
    def test_describe_configs_unknown_topic_on_a_lagging_broker_is_retried(self) -> None:
        """The topics are listed, but the broker asked for their config does not know them yet."""
        cluster = Cluster(describe_errors=[KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.UNKNOWN_TOPIC_OR_PART])
        assert ensure(cluster)[T.jobs] == 3
        assert cluster.described == 3

    def test_topics_a_peer_created_are_waited_for_until_this_broker_lists_them(self) -> None:
        cluster = Cluster(visible_after=3)
        assert ensure(cluster) == {name: (1 if name == T.control else 3) for name in ALL}
        assert sorted(cluster.created) == sorted(ALL)

    def test_a_cluster_down_at_start_is_waited_for(self) -> None:
        """A worker restarted while its broker restarts: it waits, it does not exit."""
        cluster = Cluster(unreachable_for=3)
        assert ensure(cluster)[T.jobs] == 3
        assert cluster.listed == 4

    def test_a_cluster_that_stays_down_fails_after_the_deadline(self) -> None:
        cluster = Cluster(unreachable_for=10**9)
        with pytest.raises(BrokerUnavailable, match=r"cannot reach the Kafka cluster: .*transport.*after 0\.5 s"):
            ensure(cluster, ready_s=0.5)

    def test_topics_that_never_show_fail_after_the_deadline_naming_them(self) -> None:
        cluster = Cluster(visible_after=10**9)
        with pytest.raises(BrokerUnavailable, match=rf"{T.jobs}.*not in the cluster metadata after 0\.5 s"):
            ensure(cluster, ready_s=0.5)

    def test_a_config_still_unknown_at_the_deadline_fails_naming_the_topic(self) -> None:
        cluster = Cluster(describe_errors=[KafkaError.UNKNOWN_TOPIC_OR_PART] * 10**6)
        with pytest.raises(BrokerUnavailable, match=rf"describe {T.jobs}.*after 0\.5 s"):
            ensure(cluster, ready_s=0.5)

    def test_a_refused_describe_fails_at_once(self) -> None:
        cluster = Cluster(describe_errors=[KafkaError.TOPIC_AUTHORIZATION_FAILED])
        with pytest.raises(ConfigError, match=f"describe {T.jobs}"):
            ensure(cluster)
        assert cluster.described == 1
