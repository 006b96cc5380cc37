"""The Kubernetes manifests (kustomize base + example overlay), checked against the code.

The base is read straight from its files (its generators are simple enough to expand
here); the example overlay is rendered with `kubectl kustomize` when kubectl is on the
PATH, else those cases are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    BASE,
    DEPLOY,
    EXAMPLE,
    check_settings_env,
    load_yaml,
    load_yaml_docs,
    parse_cli,
    parse_env_file,
    parse_image,
    quantity_bytes,
    read_dockerfile,
    settings_env_names,
    settings_from,
    side_port_paths,
)
from worker.config import VENDORS, ConnectionsFile, Settings
from worker.observability import Metrics
from worker.signals import BACKSTOP_S, SHUTDOWN_OVERRUN_S

CLUSTER_SCOPED_KINDS = {"Namespace"}
MIB = 1 << 20
SECRET_FIELDS = ("client_secret", "password", "api_key")


# ---- reading ------------------------------------------------------------------------------


def kustomization(folder: Path) -> dict[str, Any]:
    data = load_yaml(folder / "kustomization.yaml")
    assert isinstance(data, dict)
    return data


def _generated_config_maps(folder: Path) -> list[dict[str, Any]]:
    out = []
    for gen in kustomization(folder).get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env_file in gen.get("envs", []):
            data.update(parse_env_file(folder / env_file))
        for item in gen.get("files", []):
            key, _, src = item.partition("=")
            path = folder / (src or key)
            data[PurePosixPath(key if src else path.name).name] = path.read_text()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return out


def read_base() -> list[dict[str, Any]]:
    """The base as kustomize would build it, minus name hashes and common labels."""
    k = kustomization(BASE)
    assert not k.get("patches") and not k.get("secretGenerator"), "extend read_base for these"
    docs: list[dict[str, Any]] = []
    for resource in k["resources"]:
        docs += load_yaml_docs(BASE / resource)
    return docs + _generated_config_maps(BASE)


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(folder: Path) -> list[dict[str, Any]]:
    tool = kubectl()
    if tool is None:
        pytest.skip("kubectl is not installed: the overlay is not rendered")
    result = subprocess.run([tool, "kustomize", str(folder)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@dataclass
class Build:
    """One environment's manifests and the worker Settings they configure."""

    name: str
    docs: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        (doc,) = self.all(kind)
        return doc

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        assert found, f"no {kind} named {name} in {self.name}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.one("Deployment")["spec"]["template"]["spec"])

    @property
    def container(self) -> dict[str, Any]:
        (c,) = [c for c in self.pod["containers"] if c["name"] == "worker"]
        return dict(c)

    def env(self) -> dict[str, str]:
        """EXPORT_WORKER_* the worker container gets: envFrom ConfigMaps, then literal env."""
        out: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            ref = source.get("configMapRef")
            assert ref is not None, f"envFrom {source} is not a ConfigMap"
            out.update(self.named("ConfigMap", ref["name"])["data"])
        for item in self.container.get("env", []):
            if "value" in item:
                out[item["name"]] = str(item["value"])
        return out

    def env_from_refs(self) -> list[str]:
        """Names of env entries filled from a Secret or the downward API."""
        return [item["name"] for item in self.container.get("env", []) if "valueFrom" in item]

    def settings(self) -> Settings:
        return settings_from(self.env())

    def volume_for(self, mount_path: str) -> dict[str, Any]:
        (mount,) = [m for m in self.container["volumeMounts"] if m["mountPath"] == mount_path]
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == mount["name"]]
        return dict(volume)

    def scaled_object(self) -> dict[str, Any]:
        return self.one("ScaledObject")

    def trigger(self, kind: str) -> dict[str, Any]:
        (trigger,) = [t for t in self.scaled_object()["spec"]["triggers"] if t["type"] == kind]
        return dict(trigger)


@pytest.fixture(params=["base", "overlays/example"])
def build(request: pytest.FixtureRequest) -> Build:
    if request.param == "base":
        return Build("base", read_base())
    return Build(request.param, render(DEPLOY / request.param))


def yaml_files() -> Iterator[Path]:
    """The Kubernetes manifests: every YAML file under deploy/ but the compose demo's
    own configs (deploy/compose/, e.g. the OpenTelemetry Collector's)."""
    for pattern in ("*.yaml", "*.yml"):
        yield from sorted(p for p in DEPLOY.rglob(pattern) if (DEPLOY / "compose") not in p.parents)


# ---- files ----------------------------------------------------------------------------------


class TestFiles:
    def test_every_manifest_parses_as_a_kubernetes_object(self) -> None:
        """Each YAML under deploy/ parses; resources have apiVersion, kind and a name."""
        files = list(yaml_files())
        assert len(files) >= 8
        for path in files:
            docs = load_yaml_docs(path)
            assert docs, f"{path} is empty"
            if path.name in ("kustomization.yaml", "kustomizeconfig.yaml") or "patches" in path.parts:
                continue
            for doc in docs:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), path
                assert doc["metadata"].get("name"), path

    def test_kustomizations_reference_existing_files(self) -> None:
        """resources, patches, configurations and generator inputs all exist."""
        for k_file in DEPLOY.rglob("kustomization.yaml"):
            folder = k_file.parent
            k = kustomization(folder)
            paths = [*(k.get("resources") or []), *(k.get("configurations") or [])]
            paths += [p["path"] for p in k.get("patches", []) if "path" in p]
            for gen in [*k.get("configMapGenerator", []), *k.get("secretGenerator", [])]:
                paths += gen.get("envs", []) + [f.partition("=")[2] or f for f in gen.get("files", [])]
            assert paths, folder
            for rel in paths:
                assert (folder / rel).exists(), f"{folder}: {rel} does not exist"

    def test_base_has_the_operating_objects(self) -> None:
        """Deployment, Service, PodDisruptionBudget and KEDA ScaledObject are in the base."""
        kinds = {d["kind"] for d in read_base()}
        assert {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "ConfigMap"} <= kinds

    def test_overlay_renders_with_kubectl(self) -> None:
        """`kubectl kustomize deploy/overlays/example` succeeds, every object in its namespace."""
        docs = render(EXAMPLE)
        namespace = kustomization(EXAMPLE)["namespace"]
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED_KINDS:
                assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]


# ---- per build ------------------------------------------------------------------------------


class TestImage:
    def test_images_are_pinned(self, build: Build) -> None:
        """Every container image carries a version tag or digest, never latest."""
        for container in build.pod["containers"] + build.pod.get("initContainers", []):
            assert parse_image(container["image"]).pinned, container["image"]

    def test_runs_the_worker(self, build: Build) -> None:
        """The container runs `export-worker run` (args after the image's entrypoint)."""
        assert parse_cli(build.container.get("args", ["run"])).command == "run"


class TestSettings:
    def test_env_names_are_settings_fields(self, build: Build) -> None:
        """Every EXPORT_WORKER_* from the ConfigMap and env is a Settings field and takes effect."""
        assert check_settings_env(build.env()) == []
        names = settings_env_names()
        for name in build.env_from_refs():
            assert name in names, f"{name} is not a Settings field"

    def test_instance_id_is_the_pod_name(self, build: Build) -> None:
        """Each pod gets its own instance id (it names the transactional.id)."""
        (item,) = [e for e in build.container["env"] if e["name"] == "EXPORT_WORKER_INSTANCE_ID"]
        assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


class TestProbes:
    def _port(self, build: Build, port: Any) -> int:
        if isinstance(port, int):
            return port
        (found,) = [p["containerPort"] for p in build.container["ports"] if p.get("name") == port]
        return int(found)

    def test_probes_use_the_side_port_paths(self, build: Build) -> None:
        """Liveness asks /healthz and readiness /readyz, on the side port Settings configure."""
        served = side_port_paths()
        port = build.settings().http_port
        probes = {k: build.container[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"]["path"] == "/healthz"
        assert probes["readinessProbe"]["path"] == "/readyz"
        if "startupProbe" in build.container:
            probes["startupProbe"] = build.container["startupProbe"]["httpGet"]
        for name, probe in probes.items():
            assert probe["path"] in served, name
            assert self._port(build, probe["port"]) == port, name

    def test_grace_period_exceeds_shutdown_grace(self, build: Build) -> None:
        """Kubernetes waits longer than the worker's drain (plus a few seconds to close) before SIGKILL."""
        grace = build.pod["terminationGracePeriodSeconds"]
        # Room for the worker's own deadline (its stack dump and exit 3) before SIGKILL.
        assert grace >= build.settings().shutdown_grace_s + SHUTDOWN_OVERRUN_S + BACKSTOP_S

    def test_service_and_scraping_reach_the_side_port(self, build: Build) -> None:
        """The Service targets the side port; scrape annotations and ServiceMonitors ask /metrics there."""
        port = build.settings().http_port
        service = build.one("Service")
        (service_port,) = service["spec"]["ports"]
        assert self._port(build, service_port["targetPort"]) == port
        annotations = build.one("Deployment")["spec"]["template"]["metadata"].get("annotations", {})
        monitors = build.all("ServiceMonitor")
        assert annotations.get("prometheus.io/scrape") == "true" or monitors
        if annotations.get("prometheus.io/scrape") == "true":
            assert int(annotations["prometheus.io/port"]) == port
            assert annotations["prometheus.io/path"] in side_port_paths()
        for monitor in monitors:
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] == service_port["name"]
                assert endpoint["path"] in side_port_paths()
            assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


class TestPodSecurity:
    def test_non_root_read_only(self, build: Build) -> None:
        """Non-root, no privilege escalation, no capabilities, read-only root file system."""
        pod_ctx = build.pod["securityContext"]
        ctx = build.container["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] != 0
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]

    def test_writable_folders_are_empty_dirs(self, build: Build) -> None:
        """/tmp and a file:// result store are emptyDir volumes (the root is read-only)."""
        assert "emptyDir" in build.volume_for("/tmp")
        url = build.settings().result_store_url
        if url.startswith("file://"):
            assert "emptyDir" in build.volume_for(url.removeprefix("file://"))

    def test_resources_are_bounded(self, build: Build) -> None:
        """CPU and memory have requests and limits."""
        resources = build.container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), kind


class TestStateDir:
    def test_the_state_dir_is_set_to_the_images_folder(self, build: Build) -> None:
        """EXPORT_WORKER_STATE_DIR is set for the worker, to the folder the image creates
        for it: never the relative default, which would land in the working directory."""
        assert "EXPORT_WORKER_STATE_DIR" in build.env()
        dockerfile = read_dockerfile()
        image_dir = dockerfile.env(dockerfile.final)["EXPORT_WORKER_STATE_DIR"]
        assert build.settings().state_dir == Path(image_dir)
        assert build.settings().state_dir.is_absolute()

    def test_the_state_dir_is_a_writable_disk_backed_empty_dir(self, build: Build) -> None:
        """The stores live on a pod-local emptyDir mounted writable, on disk (a tmpfs would
        count against the memory limit), while the root file system stays read-only."""
        state_dir = str(build.settings().state_dir)
        volume = build.volume_for(state_dir)
        assert "emptyDir" in volume
        assert volume["emptyDir"].get("medium", "") != "Memory"
        (mount,) = [m for m in build.container["volumeMounts"] if m["mountPath"] == state_dir]
        assert mount.get("readOnly", False) is False
        assert build.container["securityContext"]["readOnlyRootFilesystem"] is True

    def test_the_size_warning_comes_before_eviction(self, build: Build) -> None:
        """The emptyDir has a sizeLimit (over it the kubelet evicts the pod) no smaller
        than EXPORT_WORKER_STATE_MAX_MB, so the worker's 80 % warning is logged first."""
        volume = build.volume_for(str(build.settings().state_dir))
        limit = quantity_bytes(volume["emptyDir"]["sizeLimit"])
        assert build.settings().state_max_mb * MIB <= limit


class TestConnections:
    def connections(self, build: Build) -> tuple[ConnectionsFile, str]:
        path = PurePosixPath(str(build.settings().connections_file))
        volume = build.volume_for(str(path.parent))
        config_map = build.named("ConfigMap", volume["configMap"]["name"])
        text = config_map["data"][path.name]
        return ConnectionsFile.model_validate(tomllib.loads(text)), str(path)

    def test_connections_file_is_mounted_from_a_config_map(self, build: Build) -> None:
        """EXPORT_WORKER_CONNECTIONS_FILE is a key of a mounted ConfigMap that parses as a ConnectionsFile."""
        conns, _ = self.connections(build)
        assert sorted(c.vendor for c in conns.connections.values()) == sorted(VENDORS)

    def test_credentials_are_files_from_the_mounted_secret(self, build: Build) -> None:
        """Every SecretRef is a file in the folder where the credentials Secret is mounted."""
        conns, _ = self.connections(build)
        refs = [getattr(c, f) for c in conns.connections.values() for f in SECRET_FIELDS]
        refs = [r for r in refs if r is not None]
        assert refs
        folders = {str(PurePosixPath(str(r.file)).parent) for r in refs if r.file is not None}
        assert len(folders) == 1 and all(r.file is not None for r in refs), "credentials must be files"
        (folder,) = folders
        volume = build.volume_for(folder)
        assert "secret" in volume
        mount = next(m for m in build.container["volumeMounts"] if m["mountPath"] == folder)
        assert mount.get("readOnly") is True
        secrets = {s["metadata"]["name"]: s for s in build.all("Secret")}
        if build.name != "base":  # the base leaves the Secret to the overlay
            data = secrets[volume["secret"]["secretName"]]["data"]
            for ref in refs:
                assert PurePosixPath(str(ref.file)).name in data, ref.file

    def test_every_referenced_object_exists(self, build: Build) -> None:
        """ConfigMaps, Secrets and trigger authentications that the objects name are in the build."""
        present = {(d["kind"], d["metadata"]["name"]) for d in build.docs}
        wanted = [("ConfigMap", v["configMap"]["name"]) for v in build.pod["volumes"] if "configMap" in v]
        wanted += [("ConfigMap", e["configMapRef"]["name"]) for e in build.container.get("envFrom", [])]
        if build.name == "base":
            wanted = [w for w in wanted if w[0] == "ConfigMap"]
        else:
            wanted += [("Secret", v["secret"]["secretName"]) for v in build.pod["volumes"] if "secret" in v]
            wanted += [
                ("Secret", e["valueFrom"]["secretKeyRef"]["name"])
                for e in build.container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            for auth in build.all("TriggerAuthentication"):
                wanted += [("Secret", ref["name"]) for ref in auth["spec"].get("secretTargetRef", [])]
            for trigger in build.scaled_object()["spec"]["triggers"]:
                if "authenticationRef" in trigger:
                    wanted.append(("TriggerAuthentication", trigger["authenticationRef"]["name"]))
        for item in wanted:
            assert item in present, f"{build.name}: {item} is referenced but not built"


class TestScaling:
    def test_kafka_trigger_watches_the_workers_group_and_topic(self, build: Build) -> None:
        """The lag trigger names the request topic, group id and bootstrap the workers use."""
        settings = build.settings()
        meta = build.trigger("kafka")["metadata"]
        assert meta["topic"] == settings.topics.requests
        assert meta["consumerGroup"] == settings.group_id
        assert meta["bootstrapServers"] == settings.kafka_bootstrap
        assert str(meta.get("allowIdleConsumers", "false")).lower() == "false"
        # The worker starts from the earliest offset when its group has none.
        assert meta.get("offsetResetPolicy") == "earliest"

    def test_prometheus_trigger_uses_a_metric_the_worker_exports(self, build: Build) -> None:
        """The open-jobs trigger queries export_worker_open_jobs, which /metrics serves."""
        query = build.trigger("prometheus")["metadata"]["query"]
        assert "export_worker_open_jobs" in query
        metrics = Metrics()
        metrics.watch_open_jobs(lambda: {("itron", "RUNNING"): 2})
        assert 'export_worker_open_jobs{status="RUNNING",vendor="itron"} 2.0' in metrics.render().decode()

    def test_replicas_bounded_by_partitions(self, build: Build) -> None:
        """maxReplicaCount is at most the partition count: more replicas would own nothing."""
        spec = build.scaled_object()["spec"]
        partitions = build.settings().topics.partitions
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions

    def test_keda_owns_the_replica_count(self, build: Build) -> None:
        """The ScaledObject targets the Deployment, which sets no replicas of its own."""
        deployment = build.one("Deployment")
        target = build.scaled_object()["spec"]["scaleTargetRef"]
        assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"]

    def test_disruption_budget_and_service_select_the_pods(self, build: Build) -> None:
        """PDB and Service selectors match the pod labels; the PDB lets one pod go at a time."""
        labels = build.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        pdb = build.one("PodDisruptionBudget")["spec"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        assert build.one("Service")["spec"]["selector"].items() <= labels.items()
        min_replicas = build.scaled_object()["spec"]["minReplicaCount"]
        allowed = pdb.get("maxUnavailable", min_replicas - pdb.get("minAvailable", min_replicas))
        assert 1 <= allowed < min_replicas or (allowed == 1 and min_replicas == 1)
