"""A local Apache Kafka (KRaft, one JVM per node as broker and controller), fetched by Maven.

The engine for `make run`, the tests and the benchmarks when Java >= 17 and Maven are found
(`java_and_maven()`; otherwise the Tansu stand-in of `wazza_tools.dev.localbroker`). The broker's
jars come from Maven Central once (`ensure_jars()`, pinned in `apache-kafka.pom.xml`) into
`${XDG_CACHE_HOME:-~/.cache}/wazza-hooks/kafka-<version>/libs`; each node keeps its log under a
state folder the caller gives, so a restart finds its topics and records again.

What it gives that Tansu lacks: a durable log on disk (a stop, or a kill -9, loses nothing that
was acknowledged with acks=all), idempotent producers (InitProducerId, sequence numbers), topic
ids (a topic deleted and recreated under the same name is a different topic), a real group
coordinator, and a three-node cluster (`ApacheKafkaCluster`) for replication and fail-over tests.

Its cost, measured on a 2-core machine (JDK 17, Kafka 4.1.1, jars fetched): one node serves
3.5-5.5 s after `start()` on an empty state folder (formatting included) and 2.2-3.5 s on a
formatted one (Tansu: milliseconds); its JVM's RSS is ~325 MB after start and ~350 MB after
20,000 idempotent sends and reading them back. The three-node cluster serves ~10 s after
`start()` (formatting included), ~315 MB RSS per node. The first use fetches ~45 MB of jars.

Version: Kafka 4.1.1 (pinned in the pom). It has the KIP-896 removals of Kafka 4.0 (old
protocol versions), which aiokafka 0.14 does not use: it picks Produce v7, Fetch v11, Metadata v5,
ListOffsets v3, OffsetCommit/OffsetFetch v3, JoinGroup v5, all served by 4.1.1 and by 4.4.0
alike. 4.1.1 is a bug-fix release; 4.4.0 (the newest) gives this project nothing more and turns
on by default features it does not use (share and streams groups, transaction.version 2).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import io
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from wazza_tools.dev.localbroker import (
    BrokerError,
    BrokerProcess,
    LocalBroker,
    free_port,
    port_in_use,
)

POM = Path(__file__).with_name("apache-kafka.pom.xml")
"""The Maven pom that pins the broker's version and lists its jars."""

# The broker as `kafka-server-start.sh` runs it, and the storage formatter of `kafka-storage.sh`
# (still the Scala object in kafka_2.13 in Kafka 4.x).
_BROKER_MAIN = "kafka.Kafka"
_STORAGE_MAIN = "kafka.tools.StorageTool"

# Kafka 4 needs Java 17 for its broker (Java 11 is for clients only since 4.0).
_MIN_JAVA = 17
# The first fetch downloads ~45 MB from Maven Central; a slow link gets ample room, and a hung
# Maven is reported rather than waited on forever.
_FETCH_TIMEOUT_SECONDS = 900.0
# `java -version` answers in well under a second; a loaded machine gets room.
_JAVA_VERSION_TIMEOUT_SECONDS = 30.0
# Formatting the storage is a JVM start plus a few file writes: about 1-2 s.
_FORMAT_TIMEOUT_SECONDS = 60.0
# One node answers Metadata 2-6 s after `java` starts on 2 cores (see the docstring); a
# loaded CI machine, or three JVMs starting at once, gets generous room.
_START_TIMEOUT_SECONDS = 90.0
# A controlled shutdown (leadership moved away, logs flushed and closed cleanly) takes a few
# seconds; past this the node is killed, which costs a log recovery at the next start.
_STOP_TIMEOUT_SECONDS = 30.0
# After SIGKILL the kernel reaps the process at once; this only bounds a wait that cannot hang.
_KILL_TIMEOUT_SECONDS = 10.0
# Between two readiness probes while a node starts.
_PROBE_INTERVAL_SECONDS = 0.1
# One probe (connect, one Metadata v1 round trip, no ApiVersions) on loopback takes milliseconds.
_PROBE_TIMEOUT_SECONDS = 2.0
# How much of a failing node's log goes into the error message.
_LOG_TAIL_LINES = 40
# The heap: measured, a node just started has ~170 MB of heap in use (before its first GC) and
# light load keeps RSS near 350 MB; 512 MB caps a node so that three fit on a developer machine.
_HEAP_OPTIONS = ("-Xms256m", "-Xmx512m")
# The JVM options of Kafka's own kafka-run-class.sh (G1 with short pauses, as in production),
# minus GC logging and JMX. Start-up: class data sharing (CDS) for the JDK's classes is on by
# default; nothing that trades steady-state throughput (TieredStopAtLevel=1) is used.
_JVM_OPTIONS = (
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
    # A broker out of memory is dead in all but name: exit, so the owner sees it.
    "-XX:+ExitOnOutOfMemoryError",
)
# A webhook body may be 1 MiB; with its headers and the record batch's own overhead it must
# still fit in one record batch (Kafka's default, 1 MiB + 12 bytes, would refuse it).
MESSAGE_MAX_BYTES = 2 * 1024 * 1024
# The quiet log: warnings and errors, plus the few INFO lines that say a node started and
# stopped. Everything goes to stdout, which the caller's log_path receives.
_LOG4J2_PROPERTIES = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.raft_server.name = kafka.server.KafkaRaftServer
logger.raft_server.level = INFO
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = INFO
logger.controller.name = kafka.server.ControllerServer
logger.controller.level = INFO
"""


def kafka_version() -> str:
    """The Kafka version pinned in the pom (its `kafka.version` property)."""
    tree = ET.parse(POM)  # noqa: S314 - our own file, shipped with the package
    found = tree.find(
        "{http://maven.apache.org/POM/4.0.0}properties/"
        "{http://maven.apache.org/POM/4.0.0}kafka.version"
    )
    if found is None or not found.text:
        raise BrokerError(f"{POM} has no kafka.version property")
    return found.text.strip()


def cache_dir() -> Path:
    """Where this version's jars are kept: outside the repository, shared by every checkout."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wazza-hooks" / f"kafka-{kafka_version()}"


def _java() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def _java_major(java: str) -> int | None:
    try:
        done = subprocess.run(  # noqa: S603 - the machine's java, a fixed argument
            [java, "-version"],
            capture_output=True,
            text=True,
            timeout=_JAVA_VERSION_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    # `openjdk version "17.0.15" 2025-04-15`, or `java version "1.8.0_392"` for Java 8.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def java_and_maven() -> str | None:
    """None when Java >= 17 and Maven are found (Apache Kafka can run here); else a sentence
    saying what is missing, for the caller to print before falling back to Tansu."""
    java = _java()
    if java is None:
        return f"Java {_MIN_JAVA} or newer is not installed (no java on PATH or in $JAVA_HOME)"
    major = _java_major(java)
    if major is None:
        return f"cannot tell the version of {java} (`{java} -version` failed)"
    if major < _MIN_JAVA:
        return f"{java} is Java {major}; Apache Kafka 4 needs Java {_MIN_JAVA} or newer"
    if shutil.which("mvn") is None:
        return "Maven (mvn) is not installed: it fetches the Apache Kafka jars once"
    return None


def ensure_jars() -> Path:
    """The folder of the broker's jars, fetched with Maven on first use; raises BrokerError
    (with Maven's last lines) when the fetch fails. A fetch that did not finish is redone: the
    jars count only once a marker was written after a complete copy."""
    home = cache_dir()
    libs = home / "libs"
    marker = home / "complete"
    if marker.is_file() and libs.is_dir():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not installed: it fetches the Apache Kafka jars once")
    home.mkdir(parents=True, exist_ok=True)
    # Test workers (pytest -n) and `make run` may all start at once on a fresh machine: one
    # fetches, the others wait on the lock and then find the marker.
    with (home / "fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and libs.is_dir():
            return libs
        _fetch(mvn, home, libs, marker)
    return libs


def _fetch(mvn: str, home: Path, libs: Path, marker: Path) -> None:
    partial = home / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(libs, ignore_errors=True)
    print(
        f"fetching Apache Kafka {kafka_version()} with Maven into {home} (once)",
        file=sys.stderr,
        flush=True,
    )
    try:
        done = subprocess.run(  # noqa: S603 - the machine's mvn with our own pom and arguments
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_FETCH_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"Maven did not fetch Apache Kafka within {_FETCH_TIMEOUT_SECONDS:g} s"
        ) from exc
    if done.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
        raise BrokerError(
            f"Maven could not fetch Apache Kafka {kafka_version()} "
            f"(exit code {done.returncode}):\n{tail}"
        )
    partial.rename(libs)
    marker.write_text(kafka_version() + "\n")


def new_cluster_id() -> str:
    """A random cluster id as Kafka writes them (a UUID in URL-safe base64, 22 characters, not
    starting with '-', which the storage tool would take for an option)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def voters_of(nodes: Sequence[tuple[int, str, int]]) -> str:
    """`controller.quorum.voters` for (node id, host, controller port) triples."""
    return ",".join(f"{node}@{host}:{port}" for node, host, port in nodes)


def server_properties(
    *,
    node_id: int,
    host: str,
    port: int,
    controller_port: int,
    voters: str,
    data_dir: Path,
    cluster_size: int = 1,
) -> dict[str, str]:
    """The server properties of one node that is both broker and controller. The one place
    they are decided; `deploy/compose.yaml` sets the same values where it sets the same keys
    (a test holds them together)."""
    # Internal topics (consumer offsets, transaction state) can have no more replicas than there
    # are brokers; three is production's number once there are three.
    replicas = str(min(3, cluster_size))
    return {
        # One JVM per node is both: no separate controller processes to start and watch.
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        # Clients on host:port; the quorum on its own listener, which clients never see.
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        # A static quorum: every node knows all voters from its configuration (no --standalone
        # formatting, no dynamic reconfiguration to drive).
        "controller.quorum.voters": voters,
        "log.dirs": str(data_dir),
        # Production's rule (deploy/compose.yaml): topics are made by `wazza-hooks topics
        # ensure` with the chosen partition count; a topic auto-created by a first produce or
        # metadata request would get the broker default instead, and hide a missing step.
        "auto.create.topics.enable": "false",
        # Tests and development join consumer groups constantly; the default 3 s delay before
        # the first rebalance would add 3 s to each join.
        "group.initial.rebalance.delay.ms": "0",
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        # With three replicas, an acknowledged transaction marker survives one node lost;
        # with one, one is all there is.
        "transaction.state.log.min.isr": str(min(2, cluster_size)),
        # The consumer-offsets topic: Kafka's default is 50 partitions, each a few files and a
        # log to load at start; a development broker needs few (start time, open files).
        "offsets.topic.num.partitions": "6",
        # Topics created without a count (none are, by the project: `topics ensure` gives one).
        "num.partitions": "3",
        # A 1 MiB webhook body plus headers in one record batch (see MESSAGE_MAX_BYTES); replicas
        # must be able to fetch such a batch too.
        "message.max.bytes": str(MESSAGE_MAX_BYTES),
        "replica.fetch.max.bytes": str(MESSAGE_MAX_BYTES),
    }


def _properties_text(props: Mapping[str, str]) -> str:
    """A Java properties file; values here hold no characters that need escaping but '\\'."""
    return "".join(f"{key}={value.replace(chr(92), chr(92) * 2)}\n" for key, value in props.items())


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


def _metadata_brokers(host: str, port: int, timeout: float) -> set[int]:
    """The broker ids a Metadata (v1, no topics) answer on host:port lists; raises OSError when
    the node does not answer. A KRaft broker lists itself only once it has caught up with the
    quorum's metadata and been unfenced: then it serves clients."""
    from aiokafka.protocol.metadata import MetadataRequest_v1

    request: Any = MetadataRequest_v1([])
    correlation = 1
    header = request.build_request_header(correlation_id=correlation, client_id="wazza-probe")
    message = header.encode() + request.encode()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(message)) + message)
        size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
        body = io.BytesIO(_recv_exactly(sock, size))
    if request.parse_response_header(body).correlation_id != correlation:
        raise OSError("Metadata answer with another correlation id")
    response = request.RESPONSE_TYPE.decode(body)
    return {int(broker[0]) for broker in response.brokers}


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


class ApacheKafka(BrokerProcess):
    """One Apache Kafka node (broker and controller in one JVM) on host:port, its log under
    `state_dir`. Use as a context manager, or call start() and stop(). The same interface as
    `wazza_tools.dev.localbroker.LocalBroker`, plus `data_dir`, `kill()` and the cluster options.

    A single node needs only `state_dir`. A node of a cluster gets its `node_id`, its
    `controller_port` and the `voters` of all nodes (see `ApacheKafkaCluster`); `overrides` are
    server properties that replace or add to `server_properties()` (a SASL or TLS listener, say);
    `format_args` are extra arguments of the storage formatter, used when the storage is first
    formatted (`--add-scram 'SCRAM-SHA-512=[name=alice,password=...]'` creates a SCRAM user).
    """

    memory_only = False
    """Its log is on disk: a stop loses nothing (`wazza-hooks dev` has nothing to drain)."""

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        *,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: str | None = None,
        cluster_size: int = 1,
        cluster_id: str | None = None,
        overrides: Mapping[str, str] | None = None,
        format_args: Sequence[str] = (),
    ) -> None:
        self.host = host
        self.port = port if port else free_port(host)
        self.controller_port = controller_port if controller_port else free_port(host)
        self.node_id = node_id
        # Absolute: the JVM runs in this folder, and reads its config by this path.
        state_dir = state_dir.resolve()
        self.state_dir = state_dir
        self.data_dir = state_dir / "data"
        """The KRaft log (topics, records, the quorum's metadata): kept across restarts."""
        self.log_path = log_path if log_path is not None else state_dir / "kafka.log"
        self.voters = voters or voters_of([(node_id, host, self.controller_port)])
        self.cluster_size = cluster_size
        self._cluster_id = cluster_id
        self.overrides = dict(overrides or {})
        self.format_args = tuple(format_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def properties(self) -> dict[str, str]:
        """This node's server properties: `server_properties()` with the overrides applied."""
        return {
            **server_properties(
                node_id=self.node_id,
                host=self.host,
                port=self.port,
                controller_port=self.controller_port,
                voters=self.voters,
                data_dir=self.data_dir,
                cluster_size=self.cluster_size,
            ),
            **self.overrides,
        }

    def launch(self) -> None:
        """Start the JVM and return at once (formatting the storage first if it never was);
        `wait_ready()` then waits until it serves. `start()` is both; a cluster launches all
        its nodes before waiting on any, since none serves before the quorum has a majority."""
        if self.running:
            return
        for port in (self.port, self.controller_port):
            if port_in_use(self.host, port):
                raise BrokerError(
                    f"port {port} on {self.host} is already in use "
                    "(is a broker already running? choose another with --port)"
                )
        libs = ensure_jars()
        java = _java()
        if java is None:
            raise BrokerError(java_and_maven() or "java is not installed")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "server.properties"
        config.write_text(_properties_text(self.properties()))
        log4j = self.state_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2_PROPERTIES)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        base = [
            java,
            *_HEAP_OPTIONS,
            *_JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={log4j}",
            "-cp",
            str(libs / "*"),
        ]
        if not (self.data_dir / "meta.properties").is_file():
            self._format(base, config)
        self._proc = subprocess.Popen(  # noqa: S603 - the machine's java and our own arguments
            [*base, _BROKER_MAIN, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.state_dir,
            # Its own process group: a Ctrl-C in the terminal reaches its owner, which stops it
            # last, after the clients (consumers leaving their groups) have stopped.
            start_new_session=True,
        )

    def _format(self, base: list[str], config: Path) -> None:
        cluster_id = self._cluster_id or new_cluster_id()
        assert self._log is not None  # noqa: S101 - opened by launch()
        try:
            done = subprocess.run(  # noqa: S603 - the machine's java and our own arguments
                [
                    *base,
                    _STORAGE_MAIN,
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    *self.format_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                timeout=_FORMAT_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(
                f"formatting {self.data_dir} took over {_FORMAT_TIMEOUT_SECONDS:g} s:\n"
                f"{_log_tail(self.log_path)}"
            ) from exc
        if done.returncode != 0:
            self._close_log()
            raise BrokerError(
                f"formatting {self.data_dir} failed (exit code {done.returncode}):\n"
                f"{_log_tail(self.log_path)}"
            )

    def wait_ready(self, timeout: float = _START_TIMEOUT_SECONDS) -> None:
        """Return once the node answers Metadata listing itself; raises BrokerError with the
        tail of its log when it exits or does not within `timeout` seconds (it is then
        stopped)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None:
                raise BrokerError(f"Apache Kafka node {self.node_id} was not started")
            if proc.poll() is not None:
                code = proc.returncode
                self._proc = None
                self._close_log()
                raise BrokerError(
                    f"Apache Kafka node {self.node_id} exited at start with code {code}; "
                    f"the end of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            with contextlib.suppress(OSError):
                if self.node_id in _metadata_brokers(self.host, self.port, _PROBE_TIMEOUT_SECONDS):
                    return
            if time.monotonic() >= deadline:
                break
            time.sleep(_PROBE_INTERVAL_SECONDS)
        self.stop()
        raise BrokerError(
            f"Apache Kafka node {self.node_id} did not serve on {self.bootstrap_servers} "
            f"within {timeout:g} s; the end of {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def start(self) -> None:
        """Start the node and return once it serves Kafka requests (it answers Metadata and
        lists itself); raises BrokerError, with the tail of its log, otherwise. The first start
        fetches the jars (once) and formats the storage; later ones reuse both."""
        self.launch()
        self.wait_ready()

    def stop(self) -> None:
        """Stop the node cleanly (SIGTERM: a controlled shutdown), killing it after
        _STOP_TIMEOUT_SECONDS; its log stays in `data_dir` for the next start."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_KILL_TIMEOUT_SECONDS)
        self._close_log()

    def kill(self) -> None:
        """Kill the node at once (SIGKILL), as a crash would: for tests of what survives one."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=_KILL_TIMEOUT_SECONDS)
        self._close_log()


class ApacheKafkaCluster:
    """Three `ApacheKafka` nodes on loopback, each broker and controller, one quorum of three:
    a cluster that keeps serving (and acknowledging acks=all with min.insync.replicas=2) with
    one node down. Nodes are `nodes[0..2]` (node ids 1..3), under `state_dir/node-<id>`."""

    SIZE = 3

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.host = host
        ports = [(free_port(host), free_port(host)) for _ in range(self.SIZE)]
        voters = voters_of([(i + 1, host, ctl) for i, (_, ctl) in enumerate(ports)])
        cluster_id = self._cluster_id()
        defaults = {
            # Every topic created without a factor is replicated to all three nodes, and an
            # acks=all write needs two of them: one node may be down without losing a write.
            "default.replication.factor": str(self.SIZE),
            "min.insync.replicas": "2",
            # A node killed without a controlled shutdown keeps its partitions (as leader, and
            # in every ISR, so acks=all writes wait on it) until the controller fences it when
            # its session expires: 9 s by default. Three seconds makes fail-over prompt for the
            # crash tests; heartbeats on loopback (every 500 ms here) never miss that.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        self.nodes = [
            ApacheKafka(
                state_dir / f"node-{i + 1}",
                port,
                host,
                node_id=i + 1,
                controller_port=ctl,
                voters=voters,
                cluster_size=self.SIZE,
                cluster_id=cluster_id,
                overrides={**defaults, **(overrides or {})},
            )
            for i, (port, ctl) in enumerate(ports)
        ]

    def _cluster_id(self) -> str:
        # All nodes must be formatted with one id; kept so that a node whose storage is wiped
        # is formatted into the same cluster again.
        path = self.state_dir / "cluster.id"
        if path.is_file():
            return path.read_text().strip()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        path.write_text(cluster_id + "\n")
        return cluster_id

    @property
    def bootstrap_servers(self) -> str:
        """All three nodes, as clients pass them."""
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def start(self) -> None:
        """Start the nodes together and return once each serves; raises BrokerError (and stops
        them all) otherwise."""
        try:
            for node in self.nodes:
                node.launch()
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node (SIGTERM to all at once, then wait: a controlled shutdown of the
        last nodes needs the others' quorum only briefly)."""
        for node in self.nodes:
            if node.running and node._proc is not None:
                node._proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ApacheKafkaCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


TANSU_LACKS = (
    "Tansu keeps its log in memory only (a stop loses every record) and refuses idempotent "
    "producers (services need KAFKA_ENABLE_IDEMPOTENCE=false)"
)
"""What the no-Java fallback lacks, said where it is chosen."""


def local_broker(
    engine: str | None, state_dir: Path, port: int, host: str = "127.0.0.1"
) -> tuple[ApacheKafka | LocalBroker, str | None]:
    """The local broker of `engine` (`kafka`, `tansu`, or None: Apache Kafka where Java 17+ and
    Maven are found, else Tansu), and why Tansu was chosen when it was not asked for by name.
    Apache Kafka keeps its log under `state_dir/kafka` and its controller on `port + 1`."""
    if engine is None:
        missing = java_and_maven()
        if missing is not None:
            return LocalBroker(port=port, host=host, log_path=state_dir / "broker.log"), missing
        engine = "kafka"
    if engine == "tansu":
        return LocalBroker(port=port, host=host, log_path=state_dir / "broker.log"), None
    missing = java_and_maven()
    if missing is not None:
        raise BrokerError(f"Apache Kafka cannot run here: {missing} (or use --engine tansu)")
    return ApacheKafka(state_dir / "kafka", port=port, host=host, controller_port=port + 1), None
