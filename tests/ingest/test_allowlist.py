"""Who is calling: the TCP peer, or X-Forwarded-For only behind trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from ingest.allowlist import Allowlist
from wazza_hooks.config import Network

# The sender's published webhook IPs (wazza-webhooks.md, "IP Allowlisting").
WAZZA_IPS = ["52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7"]
WAZZA = WAZZA_IPS[0]
STRANGER = "198.51.100.4"
PROXY = "10.0.0.5"
INNER_PROXY = "10.1.2.3"


def nets(*texts: str) -> list[Network]:
    return [ipaddress.ip_network(text) for text in texts]


ALLOWED = nets(*(f"{ip}/32" for ip in WAZZA_IPS))
TRUSTED = nets("10.0.0.0/8", "fd00::/8")


def allowlist() -> Allowlist:
    return Allowlist(ALLOWED, TRUSTED)


def test_the_client_is_the_peer_when_there_is_no_forwarded_header() -> None:
    assert allowlist().client_address(WAZZA, None) == ipaddress.ip_address(WAZZA)


def test_a_sender_ip_calling_directly_is_allowed() -> None:
    assert allowlist().allows(WAZZA, None)


def test_a_stranger_calling_directly_is_denied() -> None:
    assert not allowlist().allows(STRANGER, None)


def test_forwarded_for_from_an_untrusted_peer_is_not_believed() -> None:
    guard = allowlist()

    assert guard.client_address(STRANGER, WAZZA) == ipaddress.ip_address(STRANGER)
    assert not guard.allows(STRANGER, WAZZA)


def test_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    guard = allowlist()

    assert guard.client_address(PROXY, WAZZA) == ipaddress.ip_address(WAZZA)
    assert guard.allows(PROXY, WAZZA)


def test_a_trusted_proxy_forwarding_a_stranger_is_denied() -> None:
    assert not allowlist().allows(PROXY, STRANGER)


def test_a_trusted_proxy_itself_is_not_an_allowed_client() -> None:
    assert not allowlist().allows(PROXY, None)


def test_trusted_proxies_are_skipped_walking_from_the_right() -> None:
    forwarded = f"{WAZZA}, {INNER_PROXY}, 10.9.9.9"

    assert allowlist().client_address(PROXY, forwarded) == ipaddress.ip_address(WAZZA)
    assert allowlist().allows(PROXY, forwarded)


def test_a_spoofed_left_most_entry_is_not_believed() -> None:
    # The client wrote "52.89.214.238" itself; our proxy appended the address it really saw.
    forwarded = f"{WAZZA}, {STRANGER}"

    assert allowlist().client_address(PROXY, forwarded) == ipaddress.ip_address(STRANGER)
    assert not allowlist().allows(PROXY, forwarded)


def test_a_spoofed_trusted_looking_entry_left_of_an_untrusted_hop_is_not_believed() -> None:
    forwarded = f"{WAZZA}, {INNER_PROXY}, {STRANGER}, {INNER_PROXY}"

    assert allowlist().client_address(PROXY, forwarded) == ipaddress.ip_address(STRANGER)


@pytest.mark.parametrize(
    "forwarded",
    [
        pytest.param(f"{WAZZA}, not-an-ip", id="garbage-hop"),
        pytest.param(f"{WAZZA}, ", id="empty-last-hop"),
        pytest.param(f"{WAZZA},,{INNER_PROXY}", id="empty-middle-hop"),
        pytest.param(f"{WAZZA}:443", id="v4-with-port"),
        pytest.param("unknown", id="obfuscated"),
        pytest.param(f"{WAZZA}/32", id="a-network"),
    ],
)
def test_a_malformed_hop_leaves_the_client_unknown_and_is_denied(forwarded: str) -> None:
    guard = allowlist()

    assert guard.client_address(PROXY, forwarded) is None
    assert not guard.allows(PROXY, forwarded)


@pytest.mark.parametrize("peer", [None, "", "not-an-ip", "300.1.1.1"])
def test_an_unreadable_peer_is_denied(peer: str | None) -> None:
    guard = allowlist()

    assert guard.client_address(peer, WAZZA) is None
    assert not guard.allows(peer, WAZZA)


def test_an_ipv4_mapped_ipv6_peer_is_judged_as_its_ipv4_address() -> None:
    guard = allowlist()

    assert guard.client_address(f"::ffff:{WAZZA}", None) == ipaddress.ip_address(WAZZA)
    assert guard.allows(f"::ffff:{WAZZA}", None)
    assert not guard.allows(f"::ffff:{STRANGER}", None)


def test_an_ipv4_mapped_trusted_proxy_is_still_trusted() -> None:
    assert allowlist().allows(f"::ffff:{PROXY}", WAZZA)


def test_a_bracketed_ipv6_hop_with_a_port_is_read() -> None:
    guard = Allowlist(nets("2001:db8::/32"), TRUSTED)

    assert guard.client_address("fd00::1", "[2001:db8::7]:443") == ipaddress.ip_address(
        "2001:db8::7"
    )
    assert guard.allows("fd00::1", "[2001:db8::7]:443")


def test_the_allowlist_is_off_when_no_network_is_configured() -> None:
    guard = Allowlist([], TRUSTED)

    assert not guard.enabled
    assert guard.allows(STRANGER, None)
    assert guard.allows(None, "garbage")


def test_the_allowlist_is_on_when_a_network_is_configured() -> None:
    assert allowlist().enabled


@pytest.mark.parametrize("ip", WAZZA_IPS)
def test_each_published_sender_ip_is_allowed(ip: str) -> None:
    assert allowlist().allows(ip, None)


@pytest.mark.parametrize("ip", WAZZA_IPS)
def test_the_neighbours_of_a_published_sender_ip_are_denied(ip: str) -> None:
    address = ipaddress.IPv4Address(ip)

    assert not allowlist().allows(str(address - 1), None)
    assert not allowlist().allows(str(address + 1), None)


def test_a_wider_allowed_network_admits_every_address_in_it() -> None:
    guard = Allowlist(nets("52.89.0.0/16"), [])

    assert guard.allows("52.89.1.2", None)
    assert not guard.allows("52.90.1.2", None)


def test_without_trusted_proxies_forwarded_for_is_never_believed() -> None:
    guard = Allowlist(ALLOWED, [])

    assert not guard.allows(PROXY, WAZZA)
