"""SQLite store: a local file in WAL mode, the zero-setup default.

Statements run on the event loop's thread: each takes microseconds on a local file, and a batch
is one transaction. Several services (processes) share the file; SQLite serialises their write
transactions. Waiting for the write lock never holds the event loop for more than a few
milliseconds at a time (its health endpoints and Kafka heartbeats go on meanwhile); one that finds
the file locked for longer than the busy timeout is told StoreUnavailable and retries later
without advancing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from . import Column, StoreError, StoreUnavailable
from .keys import event_key
from .migrations import require_current, sqlite_version
from .schema import MIGRATIONS, VERSION_TABLE, spelt

# How long a transaction waits for the write lock: long enough to ride out other services' batch
# commits, short enough to report an unusable store soon.
_BUSY_TIMEOUT_MS = 1000
# Within that, SQLite's own busy handler (which sleeps in the calling thread) waits at most this
# long at a time; between its attempts the event loop runs. A write lock held by another service's
# commit is usually free again within it. (Reads, which in WAL mode meet a lock only in brief
# moments such as the last connection's checkpoint, wait this long too.)
_BLOCKING_WAIT_MS = 10
# The pause on the event loop between attempts, growing to the last.
_LOCK_PAUSES = (0.005, 0.01, 0.02, 0.05)
# Page cache per connection (KiB).
_CACHE_KIB = 64 * 1024
# Pages the WAL takes before a commit copies them into the file (SQLite's default is 1000, about
# 4 MB). Each copy syncs the file, and a busy job's pages, written by every batch, are copied
# once per checkpoint however often they changed meanwhile: at 4,000 (about 16 MB) the progress
# service spends ~4 % less CPU a record, as much as at 10,000, whose checkpoints (~40 ms here)
# would hold one batch in four times longer (bench/results/notes-20261206d.md).
_WAL_PAGES = 4_000
# The WAL file is cut back to this after a checkpoint (it would otherwise keep its largest size).
_WAL_LIMIT_BYTES = 32 * 1024 * 1024


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///relative/path` or `sqlite:////absolute/path` URL.

    `sqlite:///tmp/x.db` is ./tmp/x.db. Where ./tmp does not exist but /tmp does, the absolute
    path was surely meant: refused with the spelling of each (a store opened there would not be
    found by whoever wrote it, and no file could be made there anyway)."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"a SQLite URL is sqlite:///path, got {url!r}")
    written = url[len("sqlite:///") :]
    path = Path(written)
    # The first folder as written: `./tmp/x.db` and `x.db` say plainly where they are.
    first = written.split("/", 1)[0] if "/" in written else "."
    if first not in ("", ".", "..") and not Path(first).exists() and (Path("/") / first).is_dir():
        raise StoreError(
            f"{url} names ./{path} (relative: ./{first} does not exist here) while "
            f"/{first} exists: for /{path} write sqlite:////{path} (four slashes); for a "
            f"file under this folder, create ./{first} first"
        )
    return path


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the lock: the next attempt may succeed."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _unavailable(exc: sqlite3.Error) -> StoreError:
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"SQLite: {exc}")
    return StoreError(f"SQLite: {exc}")


class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            return self._conn.execute(sql, args).rowcount
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise _unavailable(exc) from exc
            raise

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    async def fetchone(self, sql: str, *args: Any) -> Sequence[Any] | None:
        try:
            row: Sequence[Any] | None = self._conn.execute(sql, args).fetchone()
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc
        return row

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        try:
            return list(self._conn.execute(sql, args).fetchall())
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    def for_update(self) -> str:
        return ""  # BEGIN IMMEDIATE already holds the database's write lock

    def in_list(self, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"IN ({', '.join('?' * len(values))})", list(values)

    async def insert_rows(
        self,
        table: str,
        columns: Sequence[Column],
        rows: Sequence[Sequence[Any]],
        suffix: str = "",
    ) -> None:
        names = ", ".join(name for name, _ in columns)
        marks = ", ".join("?" * len(columns))
        await self.executemany(
            f"INSERT INTO {table} ({names}) VALUES ({marks}) {suffix}",  # noqa: S608 - the caller's
            rows,
        )

    async def update_rows(
        self, table: str, key: Column, columns: Sequence[Column], rows: Sequence[Sequence[Any]]
    ) -> None:
        sets = ", ".join(f"{name} = ?" for name, _ in columns)
        await self.executemany(
            f"UPDATE {table} SET {sets} WHERE {key[0]} = ?",  # noqa: S608 - the caller's names
            rows,
        )


class SqliteStore:
    """The store in one SQLite file."""

    def __init__(self, url: str, conn: sqlite3.Connection) -> None:
        self.url = url
        self._conn = conn

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> SqliteStore:
        path = sqlite_path(url)
        if not path.parent.is_dir():
            # Not made here: a typo in DATABASE_URL (or sqlite:///tmp/x.db, which is ./tmp/x.db,
            # where /tmp/x.db was meant: sqlite:////tmp/x.db) would otherwise quietly start an
            # empty store somewhere unexpected. The dev stack makes its own ./var first.
            raise StoreError(
                f"cannot open SQLite store {path.resolve()}: its folder does not exist "
                "(create it, or check DATABASE_URL: sqlite:///relative/path or "
                "sqlite:////absolute/path)"
            )
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; a power loss may drop the last
            # commits, but offsets live in the same file, so those events are simply re-read.
            conn.execute("PRAGMA synchronous=NORMAL")
            # The dedup and history keys are random (event ids), so each batch touches pages
            # all over their indexes; SQLite's default 2 MiB cache rereads them from the file
            # every batch.
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
            # Migration 5 keys the history's event ids with the same function as the consumers.
            conn.create_function("wazza_event_key", 1, event_key, deterministic=True)
            conn.execute(VERSION_TABLE)
            if migrate:
                _migrate(conn)  # at the start: waiting the full busy timeout here is fine
            else:
                require_current(sqlite_version(conn), str(path))
            conn.execute(f"PRAGMA busy_timeout={_BLOCKING_WAIT_MS}")
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            message = f"cannot open SQLite store {path}: {exc}"
            if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
                raise StoreUnavailable(message) from exc
            # A folder it may not write, a file that is not a database, a failed migration:
            # waiting does not change these.
            raise StoreError(message) from exc
        return cls(url, conn)

    async def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting for the write lock up to the busy timeout without holding the
        event loop more than _BLOCKING_WAIT_MS at a time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _BUSY_TIMEOUT_MS / 1000
        attempt = 0
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.Error as exc:
                busy = isinstance(exc, sqlite3.OperationalError) and _busy(exc)
                if not busy or loop.time() >= deadline:
                    raise _unavailable(exc) from exc
            await asyncio.sleep(_LOCK_PAUSES[min(attempt, len(_LOCK_PAUSES) - 1)])
            attempt += 1

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        await self._begin()
        try:
            yield _SqliteTx(self._conn)
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise _unavailable(exc) from exc

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[_SqliteTx]:
        yield _SqliteTx(self._conn)

    async def close(self) -> None:
        self._conn.close()


def _migrate(conn: sqlite3.Connection) -> None:
    # A store already at the current version is only read here: the write lock that applying a
    # migration needs would make every `jobs` or `verify` command wait for the consumers' batch
    # commits (or fail past the busy timeout) just to learn there is nothing to do.
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    if (row[0] or 0) >= len(MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        current = row[0] or 0
        for number, statements in enumerate(MIGRATIONS, start=1):
            if number <= current:
                continue
            for statement in statements:
                conn.execute(spelt(statement, "sqlite"))
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
