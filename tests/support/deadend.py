"""A Kafka-protocol broker whose advertised address leads nowhere, for the tests of a client's
start: bootstrap answers, the broker it names never does (the classic misconfigured
`advertised.listeners`)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from wazza_tools.dev.localbroker import broker_binary, free_port, port_in_use


@contextmanager
def broker_advertising_a_dead_end() -> Iterator[str]:
    """Tansu listening on one port and advertising another, where a socket takes connections
    into its backlog and never answers; yields the bootstrap address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead_end:
        dead_end.bind(("127.0.0.1", 0))
        dead_end.listen(64)
        port = free_port()
        proc = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{dead_end.getsockname()[1]}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not port_in_use("127.0.0.1", port):
                assert proc.poll() is None, "the broker exited at start"
                assert time.monotonic() < deadline, "the broker did not listen"
                time.sleep(0.05)
            yield f"127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)
