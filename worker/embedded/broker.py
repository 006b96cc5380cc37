"""Run the official Apache Kafka broker (``org.apache.kafka:kafka_2.13``) locally.

The jars are fetched once from Maven Central with ``mvn dependency:copy-dependencies``
into a cache folder (``$EXPORT_WORKER_CACHE_DIR``, default ``~/.cache/export-worker``),
the storage is formatted with ``kafka.tools.StorageTool``, and ``kafka.Kafka`` runs as a
combined broker+controller on free loopback ports with a bounded heap. It is stopped by
its PID. No look-alike broker is ever substituted: if the jars cannot be fetched this
fails with the Maven output.
"""

from __future__ import annotations

import base64
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

KAFKA_VERSION = os.environ.get("EXPORT_WORKER_KAFKA_VERSION", "4.1.1")
POM = Path(__file__).with_name("pom.xml")


class BrokerError(RuntimeError):
    """The embedded broker could not be fetched or started."""


def cache_dir() -> Path:
    root = os.environ.get("EXPORT_WORKER_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "export-worker"


def fetch_jars(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """The folder holding the broker's jars, fetching them on first use."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is needed once to fetch the Apache Kafka jars; install it or set KAFKA_BOOTSTRAP"
        )
    staging = Path(tempfile.mkdtemp(prefix="kafka-jars-", dir=cache_dir() if cache_dir().exists() else None))
    cmd = [
        mvn,
        "-B",
        *(["-q"] if quiet else []),
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        f"-Dkafka.version={version}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"fetching Apache Kafka {version} jars failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    if libs.exists():
        shutil.rmtree(libs)
    staging.rename(libs)
    marker.write_text(version)
    return libs


def _load_libc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


# Loaded here, in the parent: the child below only makes one syscall between fork and exec.
_LIBC = _load_libc()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: have Linux SIGTERM the broker when the process that
    started it dies (a killed test run must not leave a broker behind)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


class EmbeddedKafka:
    """A single-node KRaft Kafka on 127.0.0.1.

    Args:
        data_dir: where logs and metadata go (a new temporary folder by default).
        heap: JVM heap, e.g. ``512m``.
        log_level: broker log level written to ``<data_dir>/broker.log``.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        heap: str = "512m",
        version: str = KAFKA_VERSION,
        log_level: str = "WARN",
    ) -> None:
        self.version = version
        self.heap = heap
        self.log_level = log_level
        self._own_dir = data_dir is None
        self.data_dir = (data_dir or Path(tempfile.mkdtemp(prefix="export-worker-kafka-"))).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.controller_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _write_config(self) -> Path:
        config = self.data_dir / "server.properties"
        logs = self.data_dir / "logs"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    "inter.broker.listener.name=PLAINTEXT",
                    f"log.dirs={logs}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=10",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "transaction.state.log.num.partitions=10",
                    # Abort a dead producer's open transaction soon after it times out, so a
                    # new owner's restore is not held back for long.
                    "transaction.abort.timed.out.transaction.cleanup.interval.ms=1000",
                    "group.initial.rebalance.delay.ms=0",
                    "group.min.session.timeout.ms=1000",
                    "log.cleaner.backoff.ms=1000",
                    "log.flush.interval.messages=9223372036854775807",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "",
                ]
            )
        )
        (self.data_dir / "log4j2.properties").write_text(
            LOG4J2.format(log=self.data_dir / "broker.log", level=self.log_level)
        )
        return config

    def _java(self, libs: Path, *args: str) -> list[str]:
        java = shutil.which("java", path=os.path.join(os.environ.get("JAVA_HOME", ""), "bin")) or shutil.which("java")
        if java is None:
            raise BrokerError("Java 17+ is needed to run the embedded Apache Kafka; install it or set KAFKA_BOOTSTRAP")
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1" if "StorageTool" in args[0] else "-XX:+UseStringDeduplication",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def start(self, timeout: float = 90.0) -> str:
        """Start (or restart on the same ports and data) and wait until it answers."""
        libs = fetch_jars(self.version)
        if not self.port:
            self.port, self.controller_port = free_port(), free_port()
        config = self._write_config()
        if not self._formatted:
            fmt = subprocess.run(
                # --cluster-id=: a random id may start with "-" and would read as a flag.
                self._java(
                    libs, "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}", "-c", f"{config}"
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
            self._formatted = True
        out = open(self.data_dir / "stdout.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one syscall, no allocation or locks
        )
        out.close()
        self._wait_ready(timeout)
        return self.bootstrap

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerError(f"Kafka exited with {self.process.returncode}; see {self.data_dir}/stdout.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.1)
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except Exception:  # metadata not served yet
                time.sleep(0.1)
        self.stop()
        raise BrokerError(f"Kafka did not answer within {timeout:.0f} s; see {self.data_dir}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (clean shutdown), then SIGKILL if it does not exit in time."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (chaos tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedKafka:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
