"""Event ids as the store keys them: 32 bytes, whatever the sender's id looks like.

Most ids are the SHA-256 hex of the body (the ingester's, when the sender gave none): their 32
bytes are the key, and the readable id is the key in hex again, so nothing else is stored. Any
other id (a Standard Webhooks `webhook-id`, 1 to 256 characters) is keyed by the SHA-256 of a
prefix and the id, and kept as it is beside the key for the history to show. The two kinds
cannot meet: a hashed id would need a SHA-256 preimage of a body's id to equal it.

Why 32 bytes and not a 64-bit key: the history must show the id, so its 32 bytes are stored
anyway, and as the key they cost nothing more; a 64-bit key would add 8 bytes a row.
"""

from __future__ import annotations

import hashlib

HEX_ID_CHARS = 64
"""The length of a SHA-256 hex id, the one kind of id stored as its own bytes."""
_HASHED_PREFIX = b"wazza-event-id:"
"""Keeps the hash of an id apart from any body's hash (ids and bodies never share a digest)."""


def event_key(event_id: str) -> bytes:
    """The 32-byte key of an event id."""
    if len(event_id) == HEX_ID_CHARS:
        try:
            key = bytes.fromhex(event_id)
        except ValueError:
            pass
        else:
            # Only the canonical spelling (lowercase, no spaces) reads back as the same id.
            if key.hex() == event_id:
                return key
    return hashlib.sha256(_HASHED_PREFIX + event_id.encode()).digest()


def event_name(event_id: str, key: bytes) -> str | None:
    """What the store keeps beside `key` to show the id: nothing when the key spells it."""
    return None if len(event_id) == HEX_ID_CHARS and key.hex() == event_id else event_id


def event_id_of(key: bytes, name: str | None) -> str:
    """The event id a stored key and name stand for."""
    return name if name is not None else key.hex()
