"""PostgreSQL store (asyncpg): what several consumer replicas share.

Rows a batch changes are locked with SELECT ... FOR UPDATE, so two services writing one job, or
a zombie and the new owner of a partition, serialise on the row instead of overwriting each
other. A lost connection is StoreUnavailable: the runtime waits and retries the batch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from wazza_hooks.config import redact_url

from . import Column, StoreError, StoreUnavailable
from .migrations import require_current
from .schema import MIGRATIONS, VERSION_TABLE, spelt

_PLACEHOLDER = re.compile(r"\?")
# The store's tables grow from nothing to millions of rows within one connection's life, and
# asyncpg prepares every statement: a generic plan made while a table was empty (a sequential
# scan) would be kept as it grows, and each batch would read whole tables (measured: batch time
# growing linearly, 27 ms to 270 ms over 30k rows). Custom plans are made per execution, and every
# statement here has an index path, so none is ever worth a sequential scan.
_SESSION = {"plan_cache_mode": "force_custom_plan", "enable_seqscan": "off"}
# Migrations from several processes starting at once take turns under this advisory lock.
_MIGRATION_LOCK = 0x7A7A_686F_6F6B
# A connection attempt to a database that is down fails after this long, then is retried.
_CONNECT_TIMEOUT_SECONDS = 5.0

# Transient by nature: the transaction was chosen to be undone (a deadlock, a serialisation
# failure) or could not get a lock in time; the whole batch is retried, never dead-lettered.
_TRANSIENT = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.LockNotAvailableError,
)
_REFUSED = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)
_UNAVAILABLE = (
    *_TRANSIENT,
    # A connection cut mid-operation (the server terminated it) can leave asyncpg's protocol in
    # a state it refuses to leave: the connection is dropped and the batch retried.
    asyncpg.InternalClientError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    TimeoutError,
)


def _numbered(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PgTx:
    dialect = "postgresql"

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._sql: dict[str, str] = {}

    def _native(self, sql: str) -> str:
        native = self._sql.get(sql)
        if native is None:
            native = self._sql[sql] = _numbered(sql)
        return native

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status: str = await self._conn.execute(self._native(sql), *args)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc!r}") from exc
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        try:
            await self._conn.executemany(self._native(sql), rows)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc!r}") from exc

    async def fetchone(self, sql: str, *args: Any) -> Sequence[Any] | None:
        try:
            row = await self._conn.fetchrow(self._native(sql), *args)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc!r}") from exc
        return None if row is None else tuple(row)

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        try:
            rows = await self._conn.fetch(self._native(sql), *args)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL: {exc!r}") from exc
        return [tuple(row) for row in rows]

    def for_update(self) -> str:
        return " FOR UPDATE"

    def in_list(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return "= ANY(?)", [list(values)]

    # Many rows as one statement over one array per column (unnest): asyncpg's executemany
    # runs the statement once per row, each planned anew under force_custom_plan; measured on a
    # 500-record batch, about 20 us a row against 2 to 3 us.
    async def insert_rows(
        self,
        table: str,
        columns: Sequence[Column],
        rows: Sequence[Sequence[Any]],
        suffix: str = "",
    ) -> None:
        if not rows:
            return
        names = ", ".join(name for name, _ in columns)
        arrays = ", ".join(f"?::{kind}[]" for _, kind in columns)
        await self.execute(
            f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) {suffix}",  # noqa: S608
            *_columns(rows, len(columns)),
        )

    async def update_rows(
        self, table: str, key: Column, columns: Sequence[Column], rows: Sequence[Sequence[Any]]
    ) -> None:
        if not rows:
            return
        every = [*columns, key]
        sets = ", ".join(f"{name} = v.{name}" for name, _ in columns)
        arrays = ", ".join(f"?::{kind}[]" for _, kind in every)
        names = ", ".join(name for name, _ in every)
        await self.execute(
            f"UPDATE {table} SET {sets} FROM unnest({arrays}) AS v({names}) "  # noqa: S608
            f"WHERE {table}.{key[0]} = v.{key[0]}",
            *_columns(rows, len(every)),
        )


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


class PostgresStore:
    """The store in a PostgreSQL database."""

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.url = redact_url(url)
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 4, migrate: bool = True) -> PostgresStore:
        """Connect with a pool of up to `pool_size` connections and apply pending migrations
        (or, with `migrate` False, raise MigrationsPending when there are any)."""
        dsn = "postgresql:" + url.split(":", 1)[1] if url.startswith("postgres:") else url
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                timeout=_CONNECT_TIMEOUT_SECONDS,
                server_settings=_SESSION,
            )
        except _REFUSED as exc:
            # Waiting does not change these: the URL names a user, password or database the
            # server does not have.
            raise StoreError(
                f"PostgreSQL at {redact_url(url)} refused the login: {exc} (check DATABASE_URL)"
            ) from exc
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot reach PostgreSQL at {redact_url(url)}: {exc}") from exc
        store = cls(url, pool)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await conn.execute(VERSION_TABLE)
                current = await conn.fetchval("SELECT MAX(version) FROM schema_version") or 0
                if not migrate:
                    require_current(current, redact_url(url))
                for number, statements in enumerate(MIGRATIONS, start=1):
                    if number <= current:
                        continue
                    for statement in statements:
                        await conn.execute(spelt(statement, "postgresql"))
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
        except StoreError:
            await pool.close()
            raise
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            await pool.close()
            raise StoreError(f"cannot migrate PostgreSQL at {redact_url(url)}: {exc}") from exc
        return store

    async def _acquire(self) -> asyncpg.Connection:
        """A pooled connection; any failure to get one (the database down, refusing
        connections, gone, or the login refused during a rotation) is StoreUnavailable."""
        try:
            return await self._pool.acquire(timeout=_CONNECT_TIMEOUT_SECONDS)
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"PostgreSQL unreachable: {exc!r}") from exc

    async def _release(self, conn: asyncpg.Connection, broken: bool) -> None:
        """Back to the pool; a connection that failed as unavailable is closed, not reused."""
        if broken:
            conn.terminate()
        with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError):
            await self._pool.release(conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTx]:
        conn = await self._acquire()
        broken = False
        try:
            txn = conn.transaction()
            try:
                await txn.start()
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(f"PostgreSQL: {exc!r}") from exc
            try:
                yield _PgTx(conn)
            except BaseException:
                with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError):
                    await txn.rollback()
                raise
            try:
                await txn.commit()
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(f"PostgreSQL: {exc!r}") from exc
        except StoreUnavailable:
            broken = True
            raise
        finally:
            await self._release(conn, broken)

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[_PgTx]:
        conn = await self._acquire()
        broken = False
        try:
            yield _PgTx(conn)
        except StoreUnavailable:
            broken = True
            raise
        finally:
            await self._release(conn, broken)

    async def close(self) -> None:
        await self._pool.close()
