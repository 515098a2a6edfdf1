"""The store: one schema on SQLite (embedded default) or PostgreSQL (shared by replicas).

Consumers keep their truth here (DESIGN.md invariant 6): job state, history, dedup keys and
offsets, all written in one transaction per batch. SQL is written once with `?` placeholders;
the PostgreSQL store numbers them (`$1`, ...) for asyncpg.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from wazza_hooks.config import redact_url

# Values per `IN (...)` list: under SQLite's historical limit of 999 bound variables.
IN_LIST_CHUNK = 500


Column = tuple[str, str]
"""A column's name and its PostgreSQL type (`text`, `bigint`, `double precision`, `integer`)."""


class StoreError(Exception):
    """Root of the store's errors."""

    retriable = False


class StoreUnavailable(StoreError):
    """The database cannot be reached or is locked: wait and retry, never skip (DESIGN.md)."""

    retriable = True


class StoreMissing(StoreError):
    """A SQLite file that does not exist, where an existing store was asked for."""


def store_problem(exc: BaseException, url: str) -> str | None:
    """The one-line message for a store failure: a `StoreError`, or an error of a driver
    (sqlite3, asyncpg) or the OS under it raised mid-command; None for anything else (a bug,
    to let show). Names the store, password hidden."""
    if not isinstance(exc, StoreError | sqlite3.Error | OSError) and not type(
        exc
    ).__module__.startswith("asyncpg"):
        return None
    shown = redact_url(url)
    text = str(exc) or repr(exc)
    return text if shown in text else f"the store at {shown}: {text}"


class Tx(Protocol):
    """An open transaction: what a service's handler writes through."""

    dialect: str
    """`sqlite` or `postgresql`, for the rare statement that differs."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement with `?` placeholders; the number of rows it changed."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per row of arguments (one round trip where the driver can)."""

    async def fetchone(self, sql: str, *args: Any) -> Sequence[Any] | None:
        """The first row of a query, or None."""

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        """Every row of a query."""

    def for_update(self) -> str:
        """The row-lock suffix of a SELECT (PostgreSQL); empty where the whole store is locked."""

    def in_list(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """A `column <this>` membership test for `values` and its arguments, per dialect."""

    async def insert_rows(
        self,
        table: str,
        columns: Sequence[Column],
        rows: Sequence[Sequence[Any]],
        suffix: str = "",
    ) -> None:
        """`INSERT INTO table (columns) <rows> suffix` (suffix: an ON CONFLICT clause): one
        statement over arrays on PostgreSQL, the driver's executemany on SQLite."""

    async def update_rows(
        self, table: str, key: Column, columns: Sequence[Column], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Set `columns` of the row whose `key` matches, for each row of values (the columns'
        values, then the key's): one statement over arrays on PostgreSQL."""


class Store(Protocol):
    """A database with the project's schema applied."""

    url: str
    """Where it is (without any password)."""

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A write transaction; commits on exit, rolls back on an exception."""

    def reader(self) -> AbstractAsyncContextManager[Tx]:
        """A read-only view for queries (jobs show/list/history)."""

    async def close(self) -> None:
        """Release connections."""


async def open_store(url: str, *, pool_size: int = 4, migrate: bool = True) -> Store:
    """Connect, apply migrations, return the store; raises StoreError naming the problem.

    `pool_size`: connections to PostgreSQL (WAZZA_PG_POOL_SIZE; SQLite has one). `migrate`
    False: apply nothing, and raise `migrations.MigrationsPending` when the store lacks a
    migration (WAZZA_MIGRATE_ON_START=false)."""
    if url.startswith("sqlite:"):
        from .sqlite import SqliteStore

        return await SqliteStore.open(url, migrate=migrate)
    if url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore

        return await PostgresStore.open(url, pool_size=pool_size, migrate=migrate)
    raise StoreError(f"DATABASE_URL must start with sqlite:/// or postgresql://, got {url[:20]!r}")


def refuse_missing_sqlite(url: str) -> None:
    """Raise `StoreMissing` for a SQLite URL whose file does not exist: opening it would create
    an empty store nobody writes to. The one place the tools' refusal is worded."""
    if not url.startswith("sqlite:"):
        return
    from .sqlite import sqlite_path

    path = sqlite_path(url)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise StoreMissing(
            f"no store at {redact_url(url)}: the SQLite file {path.absolute()} {what} "
            "(point DATABASE_URL or --database-url at the consumers' store; `make run` "
            "keeps it at ./var/wazza.db)"
        )


async def open_existing_store(url: str, *, migrate: bool = True) -> Store:
    """`open_store` for the tools, which read or change a store the consumers made: a missing
    SQLite file is refused (`refuse_missing_sqlite`), and every driver error becomes a
    `StoreError` naming the store."""
    refuse_missing_sqlite(url)
    try:
        return await open_store(url, migrate=migrate)
    except StoreError:
        raise
    except Exception as exc:
        message = store_problem(exc, url)
        if message is None:
            raise
        raise StoreUnavailable(message) from exc
