"""A PostgreSQL server for the tests, on every machine, never skipped.

`postgres_server_dsn()` first tries the server this machine and CI run (trust auth on
127.0.0.1:5432, or the one `WAZZA_TEST_POSTGRES_DSN` names); when there is none it starts a
private server from the `pgserver` wheel (a PostgreSQL build shipped on PyPI) in a temporary
directory, listening on a unix socket only. Tests then get a fresh database each with
`create_database` and drop it with `drop_database`.

As root: PostgreSQL refuses to run as root, and pgserver handles that itself. When it sees
euid 0 it creates (once, with `useradd`) a system user `pgserver`, makes the prefixes of the
data directory and of its binaries traversable by others, chowns the data directory to that
user and runs `initdb` and `pg_ctl` as it (`subprocess.run(..., user="pgserver")`). So the
data directory lives in a directory of its own made here (never in pytest's tmp tree, whose
0700 root would otherwise be opened up), and the client, root, reaches the server through the
socket that the server made in that directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

DEFAULT_SERVER_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ENV_VAR = "WAZZA_TEST_POSTGRES_DSN"
PROBE_TIMEOUT = 3.0

_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_T = TypeVar("_T")


def _run(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, on a loop of its own in a worker thread,
    so that it works whether or not the calling thread already runs an event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, factory()).result()


async def _probe(dsn: str) -> None:
    """Raise unless a real connection to `dsn` answers a query."""
    conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT)
    try:
        await conn.fetchval("SELECT 1", timeout=PROBE_TIMEOUT)
    finally:
        await conn.close()


def server_reachable(dsn: str) -> bool:
    """True when a PostgreSQL server answers at `dsn` within a few seconds."""
    try:
        _run(lambda: _probe(dsn))
    except Exception:
        return False
    return True


def _import_pgserver() -> Any:
    # pgserver computes platformdirs' runtime path when its module is imported, which warns
    # (RuntimeDirWarning) where XDG_RUNTIME_DIR is unset, as on CI; the test suite turns
    # warnings into errors. The fallback it warns about (/tmp/runtime-<uid>) is fine here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver

    return pgserver


def start_private_server(parent: Path | None = None) -> tuple[str, Callable[[], None]]:
    """Start a private PostgreSQL server (the pgserver wheel) with its data directory in a new
    directory under `parent` (default: the system temp dir). Returns its DSN, over a unix
    socket with trust auth as user postgres, and a callable that stops it and removes its files.
    """
    pgserver = _import_pgserver()
    home = Path(tempfile.mkdtemp(prefix="wazza-pg-", dir=parent))
    try:
        server = pgserver.get_server(home / "pgdata", cleanup_mode="stop")
        info = server.get_postmaster_info()
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    # The server listens on no TCP address (`-h ""`), only on its socket in `socket_dir`;
    # the socket's name carries the port (5432 unless configured otherwise).
    host = quote(str(info.socket_dir), safe="/")
    dsn = f"postgresql://postgres@/postgres?host={host}&port={info.port or 5432}"

    def stop() -> None:
        try:
            server.cleanup()
        finally:
            shutil.rmtree(home, ignore_errors=True)

    return dsn, stop


def postgres_server_dsn() -> tuple[str, Callable[[], None]]:
    """The DSN of a PostgreSQL server that the tests may create databases on, and a cleanup.

    `WAZZA_TEST_POSTGRES_DSN` when set (it must work: a server named on purpose that does not
    answer is an error, not a reason to quietly test elsewhere); otherwise the machine's server
    on 127.0.0.1:5432 when it answers; otherwise a private server started from the pgserver
    wheel, which the cleanup stops.
    """
    named = os.environ.get(ENV_VAR)
    if named:
        try:
            _run(lambda: _probe(named))
        except Exception as exc:
            raise RuntimeError(
                f"{ENV_VAR} is set but no PostgreSQL answers there: {exc!r}"
            ) from exc
        return named, lambda: None
    if server_reachable(DEFAULT_SERVER_DSN):
        return DEFAULT_SERVER_DSN, lambda: None
    return start_private_server()


def database_dsn(server_dsn: str, name: str) -> str:
    """The same server's DSN with the database replaced by `name`."""
    parts = urlsplit(server_dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a database name the tests make: {name!r}")
    return f'"{name}"'


async def create_database(server_dsn: str, name: str) -> str:
    """Create database `name` on the server; returns its DSN."""
    ident = _check_name(name)
    conn = await asyncpg.connect(server_dsn, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {ident}")
    finally:
        await conn.close()
    return database_dsn(server_dsn, name)


async def drop_database(server_dsn: str, name: str) -> None:
    """Drop database `name`, first ending any connection a test left open to it."""
    ident = _check_name(name)
    conn = await asyncpg.connect(server_dsn, timeout=10)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        # FORCE (PostgreSQL 13+) also ends a connection opened after the terminate above.
        await conn.execute(f"DROP DATABASE IF EXISTS {ident} WITH (FORCE)")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str) -> AsyncIterator[str]:
    """A database of its own (`wazza_test_<hex>`) on the server, dropped on exit; its DSN."""
    name = f"wazza_test_{uuid.uuid4().hex}"
    dsn = await create_database(server_dsn, name)
    try:
        yield dsn
    finally:
        await drop_database(server_dsn, name)
