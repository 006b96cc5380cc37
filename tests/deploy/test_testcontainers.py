"""The Itron end-to-end test (tests/integration/test_itron_pipeline.py), run against the
official apache/kafka image started by testcontainers' KafkaContainer.

Skipped, with the reason, where no Docker engine answers (as on the development
machines: only the Docker client is installed there).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testcontainers.community.kafka import KafkaContainer

from tests.conftest import make_settings
from tests.deploy.support import compose, parse_image
from tests.integration import test_itron_pipeline
from worker.config import TopicSettings

pytestmark = pytest.mark.docker


def kafka_image() -> str:
    """The image docker-compose.yml runs, so both exercise the same broker."""
    image = str(compose()["services"]["kafka"]["image"])
    assert parse_image(image).name == "apache/kafka"
    return image


class ApacheKafkaContainer(KafkaContainer):
    """testcontainers' KafkaContainer with the official apache/kafka image.

    The parent's start-up hooks are written for Confluent's images
    (/etc/confluent/docker/...); here the same wait-for-script start runs the apache/kafka
    entry script (/etc/kafka/docker/run) as a single KRaft broker+controller, after
    exporting the advertised listener with the port Docker mapped.
    """

    CONTROLLER_PORT = 9094

    def __init__(self, image: str) -> None:
        # Parent: PLAINTEXT (for the host) on 9093, BROKER (inter-broker) on 9092.
        super().__init__(image)
        self.wait_for = re.compile(r".*Kafka Server started.*")

    def configure(self) -> None:
        env = kraft_env(self.listeners, self.security_protocol_map, self.cluster_id, self.CONTROLLER_PORT)
        for key, value in env.items():
            self.with_env(key, value)

    def tc_start(self) -> None:
        host = self.get_container_host_ip()
        port = self.get_exposed_port(self.port)
        script = start_script(self.listener_name, host, int(port))
        self.create_file(script.encode(), self.TC_START_SCRIPT)


def kraft_env(listeners: str, protocol_map: str, cluster_id: str, controller_port: int) -> dict[str, str]:
    return {
        "CLUSTER_ID": cluster_id,
        "KAFKA_NODE_ID": "1",
        "KAFKA_BROKER_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"{listeners},CONTROLLER://0.0.0.0:{controller_port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": f"{protocol_map},CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@localhost:{controller_port}",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        # Transactions (the worker commits state, events and offsets in one) need this
        # on a single broker; the default of 3 never lets InitProducerId succeed.
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_LOG_DIRS": "/tmp/kraft-combined-logs",
    }


def start_script(listener_name: str, host: str, port: int) -> str:
    return (
        "#!/bin/bash\n"
        f"export KAFKA_ADVERTISED_LISTENERS={listener_name}://{host}:{port},"
        "BROKER://$(hostname -i | cut -d' ' -f1):9092\n"
        "exec /etc/kafka/docker/run\n"
    )


def docker_unavailable() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # DockerException, connection errors, missing socket
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="module")
def container_bootstrap() -> Iterator[str]:
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(f"no Docker engine: {reason}")
    with ApacheKafkaContainer(kafka_image()).start(timeout=180) as kafka:
        yield kafka.get_bootstrap_server()


class TestApacheKafkaContainer:
    def test_uses_the_compose_kafka_image(self) -> None:
        """The container image is docker-compose.yml's apache/kafka, pinned to a release."""
        ref = parse_image(kafka_image())
        assert ref.name == "apache/kafka"
        assert ref.pinned and ref.tag is not None and ref.tag[0].isdigit()

    def test_single_node_kraft_with_transactions(self) -> None:
        """The broker is its own controller and its transaction log fits one node."""
        env = kraft_env(
            "PLAINTEXT://0.0.0.0:9093,BROKER://0.0.0.0:9092", "BROKER:PLAINTEXT,PLAINTEXT:PLAINTEXT", "x", 9094
        )
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert "CONTROLLER://0.0.0.0:9094" in env["KAFKA_LISTENERS"]
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].endswith(":9094")
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
        protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        names = {item.split("://")[0] for item in env["KAFKA_LISTENERS"].split(",")}
        assert names <= set(protocols)

    def test_start_script_advertises_the_mapped_port(self) -> None:
        """Clients on the host are told the host and port Docker mapped, then the image's entry script runs."""
        script = start_script("PLAINTEXT", "localhost", 49153)
        assert "KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://localhost:49153," in script
        assert script.rstrip().endswith("exec /etc/kafka/docker/run")

    def test_skip_reason_names_the_missing_engine(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With DOCKER_HOST pointing nowhere, the module reports why it cannot run."""
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        reason = docker_unavailable()
        assert reason is not None and reason.strip()


class TestItronPipelineOnContainer:
    async def test_request_reaches_succeeded_with_one_file(
        self, container_bootstrap: str, tmp_path: Path, itron_sim: Any
    ) -> None:
        """The integration test's body, unchanged, against apache/kafka in a container."""
        import uuid

        topics = TopicSettings.model_validate({"partitions": 3}).prefixed(f"t{uuid.uuid4().hex[:10]}.")
        settings = make_settings(container_bootstrap, topics, tmp_path)
        happy_path = test_itron_pipeline.TestHappyPath()
        await happy_path.test_request_reaches_succeeded_with_one_file(settings, itron_sim)
