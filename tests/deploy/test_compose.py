"""docker-compose.yml and its files (deploy/compose/), checked without a Docker engine:
every value the services pass to export-worker is checked against the code that reads it,
and the sample requests are run through ingest and against each vendor's simulator."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.support import (
    COMPOSE_FILE,
    check_settings_env,
    compose,
    compose_env,
    environment,
    parse_cli,
    parse_image,
    project_version,
    read_dockerfile,
    settings_from,
    simulator_paths,
)
from worker import simulators
from worker.codec import Codec
from worker.config import VENDORS, ConnectionConfig, ConnectionsFile, SecretRef, Settings
from worker.engine.model import RequestInfo, Status
from worker.ingest import Ingest
from worker.produce import load_requests
from worker.result_store import FileResultStore
from worker.signals import BACKSTOP_S, SHUTDOWN_OVERRUN_S
from worker.simulators.base import Timing
from worker.testing import eventually
from worker.vendors import JobSpec, build_adapter, vendor_session

WORKER_IMAGE = "export-worker"
SECRET_FIELDS = ("client_secret", "password", "api_key")
MAX_BYTES: int = Settings.model_fields["max_request_bytes"].default


# ---- reading the compose file -------------------------------------------------------------


def services() -> dict[str, dict[str, Any]]:
    found = compose().get("services")
    assert isinstance(found, dict) and found, "no services"
    return found


def command_of(service: dict[str, Any]) -> list[str] | None:
    """The export-worker arguments a service runs (the image's CMD is `run`)."""
    if parse_image(str(service.get("image", ""))).name != WORKER_IMAGE:
        return None
    command = service.get("command", ["run"])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def services_running(command: str) -> dict[str, dict[str, Any]]:
    out = {}
    for name, service in services().items():
        args = command_of(service)
        if args is not None and parse_cli(args).command == command:
            out[name] = service
    return out


def workers() -> dict[str, dict[str, Any]]:
    return services_running("run")


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (or volume name), short syntax."""
    out = {}
    for item in service.get("volumes", []):
        source, target, *_ = str(item).split(":")
        out[target] = source
    return out


def host_file(source: str) -> Path:
    return (COMPOSE_FILE.parent / source).resolve()


def duration_s(text: str) -> float:
    """Compose durations: 40s, 1m30s, 1h."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text))
    assert parts, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """KAFKA_*LISTENERS -> {name: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, rest = item.strip().partition("://")
        host, _, port = rest.rpartition(":")
        out[name] = (host, int(port))
    return out


def connections_path() -> Path:
    worker = next(iter(workers().values()))
    target = compose_env(worker)["EXPORT_WORKER_CONNECTIONS_FILE"]
    return host_file(mounts(worker)[target])


def compose_connections() -> dict[str, ConnectionConfig]:
    return ConnectionsFile.load(connections_path()).connections


def requests_path() -> Path:
    (publisher,) = services_running("produce").values()
    call = parse_cli(command_of(publisher) or [])
    return host_file(mounts(publisher)[str(call.params["file"])])


def secret_env() -> dict[str, str]:
    """The variables the worker services set that are not Settings (the credentials)."""
    env = compose_env(next(iter(workers().values())))
    return {k: v for k, v in env.items() if not k.startswith("EXPORT_WORKER_") and k != "KAFKA_BOOTSTRAP"}


# ---- the checks ----------------------------------------------------------------------------


class TestServices:
    def test_every_part_of_the_pipeline_is_there(self) -> None:
        """Kafka, a schema registry, one simulator per vendor, two or more workers, a publisher."""
        images = {parse_image(s["image"]).name for s in services().values()}
        assert {"apache/kafka", "confluentinc/cp-schema-registry"} <= images
        simulated = [parse_cli(command_of(s) or []).params["vendors"] for s in services_running("simulate").values()]
        assert sorted(v for vendors in simulated for v in vendors) == sorted(VENDORS)
        assert len(workers()) >= 2
        assert len(services_running("produce")) == 1

    def test_images_are_pinned(self) -> None:
        """Every image has a version tag (never latest); ours carries the project version."""
        for name, service in services().items():
            ref = parse_image(service["image"])
            assert ref.pinned, f"{name}: {service['image']} is not pinned"
            if "build" in service:
                assert ref.name == WORKER_IMAGE and ref.tag == project_version(), name

    def test_kafka_matches_the_embedded_broker_version(self) -> None:
        """Compose runs the same Apache Kafka release as the tests' embedded broker."""
        import os

        from worker.embedded.broker import KAFKA_VERSION

        if os.environ.get("EXPORT_WORKER_KAFKA_VERSION"):
            pytest.skip("EXPORT_WORKER_KAFKA_VERSION overrides the embedded broker's version")
        assert parse_image(services()["kafka"]["image"]).tag == KAFKA_VERSION

    def test_host_ports_do_not_clash(self) -> None:
        """No two services publish the same host port."""
        published = [str(p).split(":")[0] for s in services().values() for p in s.get("ports", [])]
        assert len(published) == len(set(published)), published

    def test_dependencies_exist_and_can_become_healthy(self) -> None:
        """depends_on names real services; service_healthy targets have a healthcheck."""
        all_services = services()
        for name, service in all_services.items():
            for target, spec in (service.get("depends_on") or {}).items():
                assert target in all_services, f"{name} depends on unknown {target}"
                if spec.get("condition") == "service_healthy":
                    check = all_services[target].get("healthcheck", {})
                    own_image = command_of(all_services[target]) is not None
                    assert check.get("test") or own_image, f"{target} has no healthcheck"
                    assert not check.get("disable"), f"{target} has its healthcheck disabled"
        for name, worker in workers().items():
            assert worker["depends_on"]["kafka"]["condition"] == "service_healthy", name


class TestKafka:
    def env(self) -> dict[str, str]:
        return compose_env(services()["kafka"])

    def test_single_node_kraft_broker_and_controller(self) -> None:
        """One node is broker and controller, and votes for itself on a controller listener."""
        env = self.env()
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert env["CLUSTER_ID"], "the apache/kafka image formats storage with CLUSTER_ID"
        node, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
        assert node == env["KAFKA_NODE_ID"]
        bound = listeners(env["KAFKA_LISTENERS"])
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert controller in bound and bound[controller][1] == int(voter.rpartition(":")[2])
        protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(bound) <= set(protocols)
        advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        assert controller not in advertised
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised

    def test_internal_topics_fit_one_broker(self) -> None:
        """Offsets and transaction state logs have one replica, or transactions never start."""
        env = self.env()
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
        for name, worker in workers().items():
            assert settings_from(compose_env(worker)).topics.replication_factor == 1, name

    def test_clients_use_an_advertised_listener(self) -> None:
        """The workers' and the registry's bootstrap is a listener Kafka advertises."""
        advertised = set(listeners(self.env()["KAFKA_ADVERTISED_LISTENERS"]).values())
        for name, service in {**workers(), **services_running("produce")}.items():
            host, _, port = settings_from(compose_env(service)).kafka_bootstrap.partition(":")
            assert (host, int(port)) in advertised, name
        registry = compose_env(services()["schema-registry"])
        assert set(listeners(registry["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"]).values()) <= advertised
        assert registry["SCHEMA_REGISTRY_KAFKASTORE_TOPIC_REPLICATION_FACTOR"] == "1"


class TestWorkers:
    def test_env_names_are_settings_fields(self) -> None:
        """Every EXPORT_WORKER_* a worker or the publisher sets is a Settings field and takes effect."""
        for name, service in {**workers(), **services_running("produce")}.items():
            assert check_settings_env(compose_env(service)) == [], name

    def test_instance_ids_are_distinct(self) -> None:
        """Each worker has its own instance id (its transactional.id)."""
        ids = [settings_from(compose_env(w)).instance_id for w in workers().values()]
        assert len(set(ids)) == len(ids), ids

    def test_same_group_and_topics(self) -> None:
        """All workers and the publisher agree on group and topics (they share partitions)."""
        configs = {
            (s.group_id, s.topics.requests, s.topics.jobs, s.topics.partitions)
            for s in (settings_from(compose_env(x)) for x in {**workers(), **services_running("produce")}.values())
        }
        assert len(configs) == 1, configs

    def test_stop_grace_exceeds_shutdown_grace(self) -> None:
        """Docker waits longer than the worker's own drain before it sends SIGKILL."""
        for name, worker in workers().items():
            grace = settings_from(compose_env(worker)).shutdown_grace_s
            assert duration_s(worker["stop_grace_period"]) >= grace + SHUTDOWN_OVERRUN_S + BACKSTOP_S, name

    def test_schema_registry_url_reaches_the_registry(self) -> None:
        """EXPORT_WORKER_SCHEMA_REGISTRY_URL points at the registry service's listener."""
        registry = compose_env(services()["schema-registry"])
        (port,) = {urlsplit(u).port for u in registry["SCHEMA_REGISTRY_LISTENERS"].split(",")}
        for name, service in {**workers(), **services_running("produce")}.items():
            url = urlsplit(settings_from(compose_env(service)).schema_registry_url or "")
            assert (url.hostname, url.port) == ("schema-registry", port), name

    def test_connections_file_is_mounted_where_settings_look(self) -> None:
        """EXPORT_WORKER_CONNECTIONS_FILE is the target of a mount whose source exists."""
        for name, worker in workers().items():
            path = str(settings_from(compose_env(worker)).connections_file)
            assert path in mounts(worker), f"{name}: nothing mounted at {path}"
            assert host_file(mounts(worker)[path]).is_file()

    def test_result_store_folder_is_a_shared_volume(self) -> None:
        """The file:// result store is a named volume (the root file system is read-only)."""
        named = set(compose().get("volumes") or {})
        for name, worker in workers().items():
            url = settings_from(compose_env(worker)).result_store_url
            assert url.startswith("file:///"), name
            assert mounts(worker).get(url.removeprefix("file://")) in named, name
            assert worker.get("read_only") is True

    def test_each_worker_keeps_its_stores_on_its_own_named_volume(self) -> None:
        """EXPORT_WORKER_STATE_DIR is the folder the image creates for the user (a new
        named volume takes its owner) and the target of a named volume, one per worker."""
        dockerfile = read_dockerfile()
        image_dir = Path(dockerfile.env(dockerfile.final)["EXPORT_WORKER_STATE_DIR"])
        named = set(compose().get("volumes") or {})
        volumes = []
        for name, worker in workers().items():
            state_dir = settings_from(compose_env(worker)).state_dir
            assert state_dir == image_dir, name
            volumes.append(mounts(worker).get(str(state_dir)))
            assert volumes[-1] in named, f"{name}: no named volume at {state_dir}"
        assert len(set(volumes)) == len(volumes), volumes


class TestSimulators:
    def test_commands_parse_and_listen_on_their_published_port(self) -> None:
        """`export-worker simulate <vendor> --host 0.0.0.0 --port P` with P published and health-checked."""
        for name, service in services_running("simulate").items():
            call = parse_cli(command_of(service) or [])
            assert len(call.params["vendors"]) == 1, name
            (vendor,) = call.params["vendors"]
            assert vendor in simulators.SIMULATORS
            assert call.params["host"] == "0.0.0.0"
            port = call.params["port"]
            assert f"{port}:{port}" in [str(p) for p in service["ports"]], name
            probe = " ".join(service["healthcheck"]["test"])
            url = urlsplit(re.search(r"http://[^'\" ]+", probe)[0])  # type: ignore[index]
            assert url.port == port, name
            if vendor in simulators.available():
                assert url.path in simulator_paths(vendor), f"{name}: {url.path} is not served"


class TestConnections:
    def test_one_connection_per_vendor_at_its_simulator(self) -> None:
        """Each connection's base URL is the compose service simulating that vendor, on its port."""
        by_vendor = {}
        for name, service in services_running("simulate").items():
            call = parse_cli(command_of(service) or [])
            by_vendor[call.params["vendors"][0]] = (name, call.params["port"])
        conns = compose_connections()
        assert sorted(c.vendor for c in conns.values()) == sorted(VENDORS)
        for name, conn in conns.items():
            url = urlsplit(conn.base_url)
            assert (url.hostname, url.port) == by_vendor[conn.vendor], name

    def test_credentials_come_from_worker_env(self) -> None:
        """No inline secrets: every SecretRef names a variable that every worker sets."""
        refs = [(name, getattr(conn, f)) for name, conn in compose_connections().items() for f in SECRET_FIELDS]
        refs = [(name, ref) for name, ref in refs if ref is not None]
        assert len(refs) >= len(VENDORS)
        for name, ref in refs:
            assert isinstance(ref, SecretRef) and ref.env is not None, f"{name}: not an env SecretRef"
            for worker_name, worker in workers().items():
                assert ref.env in compose_env(worker), f"{worker_name} does not set {ref.env}"

    @pytest.mark.parametrize("vendor", VENDORS)
    def test_credentials_are_the_simulators_demo_credentials(self, vendor: str) -> None:
        """Resolved with the workers' env, each connection logs in as the simulator's demo_connection does."""
        if vendor not in simulators.available():
            pytest.skip(f"no {vendor} simulator in this build yet")
        (conn,) = [c for c in compose_connections().values() if c.vendor == vendor]
        demo = simulators.module(vendor).demo_connection(conn.base_url)
        for field in ("vendor", "auth_url", "client_id", "username", "scope", "subscription_id", "subscriber_id"):
            assert getattr(conn, field) == getattr(demo, field), field
        assert conn.facility == demo.facility or demo.facility is None
        with environment(secret_env()):
            for field in SECRET_FIELDS:
                mine, theirs = getattr(conn, field), getattr(demo, field)
                assert (mine is None) == (theirs is None), field
                if mine is not None:
                    assert mine.resolve().get_secret_value() == theirs.resolve().get_secret_value(), field


class TestSampleRequests:
    def records(self) -> list[dict[str, Any]]:
        return load_requests(requests_path().read_text())

    def test_one_request_per_vendor(self) -> None:
        """The publisher's file parses with load_requests: one request per connection, distinct ids."""
        records = self.records()
        conns = compose_connections()
        assert sorted(r["connection"] for r in records) == sorted(conns)
        assert len({r["request_id"] for r in records}) == len(records)
        assert requests_path() == (COMPOSE_FILE.parent / "deploy/compose/requests.json").resolve()

    async def test_ingest_accepts_every_sample(self) -> None:
        """Encoded as the publisher does, each sample passes the worker's ingest with the compose connections."""
        codec = Codec()
        ingest = Ingest(codec, compose_connections(), max_bytes=MAX_BYTES)
        now_ms = int(time.time() * 1000)
        with environment(secret_env(), clear=False):
            for offset, record in enumerate(self.records()):
                value = codec.encode("ExportRequested", record)
                info = await ingest.read(
                    record["request_id"].encode(), value, partition=0, offset=offset, now_ms=now_ms
                )
                assert isinstance(info, RequestInfo), f"{record['request_id']}: {info}"
                assert info.vendor == compose_connections()[record["connection"]].vendor

    @pytest.mark.parametrize("vendor", VENDORS)
    async def test_sample_succeeds_at_its_simulator(self, vendor: str, tmp_path: Path) -> None:
        """Submitted with the compose connection (credentials from the workers' env), the
        sample job runs to SUCCEEDED with a file at the vendor's simulator."""
        if vendor not in simulators.available():
            pytest.skip(f"no {vendor} simulator in this build yet")
        (name,) = [n for n, c in compose_connections().items() if c.vendor == vendor]
        (record,) = [r for r in self.records() if r["connection"] == name]
        codec = Codec()
        now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        info = await Ingest(codec, compose_connections(), max_bytes=MAX_BYTES).read(
            record["request_id"].encode(), codec.encode("ExportRequested", record), partition=0, offset=0, now_ms=now_ms
        )
        assert isinstance(info, RequestInfo), info
        sim = simulators.simulator_class(vendor)(timing=Timing(stages=(0.05, 0.05, 0.05)), seed=3)
        url = await sim.start()
        try:
            conn = compose_connections()[name].model_copy(update={"base_url": url})
            with environment(secret_env(), clear=False):
                async with vendor_session("export-worker/test") as client:
                    adapter = build_adapter(name, conn, client, result_store=FileResultStore(tmp_path))
                    spec = JobSpec.from_json(
                        info.request_id, info.tenant, info.connection, info.job_json, labels=info.labels
                    )
                    submitted = await adapter.submit(spec)
                    assert submitted.vendor_job_id

                    async def finished() -> Any:
                        polled = await adapter.poll(spec, submitted.vendor_job_id)
                        return polled if polled.status.terminal else None

                    final: Any = await eventually(finished, timeout=30, interval=0.1, what=f"{vendor} job finished")
        finally:
            await sim.stop()
        assert final.status is Status.SUCCEEDED, final
        assert final.file is not None
