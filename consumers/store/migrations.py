"""The store's schema version: what is applied, what is pending, and refusing to go on when
they differ (`WAZZA_MIGRATE_ON_START=false`, `wazza-hooks migrate`).

The migrations themselves are `schema.MIGRATIONS` (numbered from 1); each store applies them in
its `open` (sqlite.py, postgres.py). This module only reads the version a store records and
says what follows from it, so that both stores and the `migrate` command agree.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from . import StoreError
from .schema import MIGRATIONS, spelt

KNOWN = len(MIGRATIONS)
"""The highest migration this code knows."""


class MigrationsPending(StoreError):
    """The store lacks migrations this code needs, and was told not to apply them."""


class StoreTooNew(StoreError):
    """The store records a migration this code does not know: it was migrated by newer code."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration, as `wazza-hooks migrate --show` lists it."""

    number: int
    """Its number (1-based, the order applied)."""
    summary: str
    """The first line of its first statement."""
    applied: bool
    """True when the store records it."""


def summary(number: int) -> str:
    """The first line of migration `number`'s first statement."""
    return spelt(MIGRATIONS[number - 1][0], "sqlite").strip().splitlines()[0].strip()


def listing(version: int) -> list[Migration]:
    """Every known migration, marked applied up to `version`."""
    return [Migration(n, summary(n), n <= version) for n in range(1, KNOWN + 1)]


def require_current(version: int, where: str) -> None:
    """Raise MigrationsPending when the store at `where` (password hidden) lacks migrations."""
    if version < KNOWN:
        pending = ", ".join(str(n) for n in range(version + 1, KNOWN + 1))
        raise MigrationsPending(
            f"the store at {where} is at schema version {version}; migrations {pending} are "
            "pending and WAZZA_MIGRATE_ON_START is false: run `wazza-hooks migrate` first"
        )


def refuse_newer(version: int, where: str) -> None:
    """Raise StoreTooNew when the store at `where` is past what this code knows."""
    if version > KNOWN:
        raise StoreTooNew(
            f"the store at {where} is at schema version {version}, newer than this code's "
            f"{KNOWN}: it was migrated by a newer release, and a downgrade is not supported "
            "(nothing was changed)"
        )


def sqlite_version(conn: sqlite3.Connection) -> int:
    """The version a SQLite store records (0 when it has no version table yet)."""
    found = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if found is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)
