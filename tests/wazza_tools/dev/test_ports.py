"""free_port: ports for the local brokers and test servers, chosen where no one else's are."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from wazza_tools.dev import localbroker
from wazza_tools.dev.localbroker import free_port


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_a_free_port_lies_below_the_kernels_ephemeral_range_and_is_free() -> None:
    # An ephemeral port may be handed to another process's bind(0) or outgoing connection
    # between the choice and the broker's own bind, seconds later.
    low = _ephemeral_low()
    ports = {free_port() for _ in range(50)}
    assert all(10_000 <= port < low for port in ports), sorted(ports)
    assert len(ports) > 40  # at random, not one after another
    for port in sorted(ports)[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", free_port())) as taken:
        held = taken.getsockname()[1]
        other = free_port()
        drawn = iter([held, held, other])
        monkeypatch.setattr(localbroker.random, "randrange", lambda *_: next(drawn))
        assert free_port() == other
