"""Which client is calling, and may it: the optional IP allowlist behind trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from wazza_hooks.config import Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Allowlist:
    """Allows a request when its client address lies in one of the allowed networks.

    The client is the TCP peer, unless the peer is a trusted proxy: then `X-Forwarded-For` is
    walked from the right, skipping trusted proxies, and the first untrusted address is the client.
    An address a client wrote itself (left of an untrusted hop) is never believed.
    """

    def __init__(self, allowed: Sequence[Network], trusted_proxies: Sequence[Network]) -> None:
        self._allowed = tuple(allowed)
        self._trusted = tuple(trusted_proxies)

    @property
    def enabled(self) -> bool:
        """False when no networks are configured: everyone may call."""
        return bool(self._allowed)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> IPAddress | None:
        """The client's address, or None when it cannot be told (a malformed hop)."""
        current = _parse(peer)
        if current is None:
            return None
        if not forwarded_for or not self._is_trusted(current):
            return current
        for hop in reversed(forwarded_for.split(",")):
            address = _parse(hop)
            if address is None:
                return None
            current = address
            if not self._is_trusted(current):
                return current
        return current

    def allows(self, peer: str | None, forwarded_for: str | None) -> bool:
        """True when the allowlist is off or the client's address is in it."""
        if not self._allowed:
            return True
        client = self.client_address(peer, forwarded_for)
        return client is not None and any(client in net for net in self._allowed)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in net for net in self._trusted)


def _parse(text: str | None) -> IPAddress | None:
    if not text:
        return None
    value = text.strip()
    if value.startswith("[") and "]" in value:  # "[v6]:port" as some proxies write it
        value = value[1 : value.index("]")]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    # An IPv4 client reached over an IPv6 socket shows as ::ffff:a.b.c.d; judge the IPv4 address.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
