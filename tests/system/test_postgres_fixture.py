"""The PostgreSQL the tests use: a database per test, and the fresh-machine fallback."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support.postgres import (
    ENV_VAR,
    create_database,
    drop_database,
    postgres_server_dsn,
    server_reachable,
    start_private_server,
)

# Databases seen by the parametrized test below, in the order its cases ran.
_seen: list[str] = []


async def test_database_round_trip(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == urlsplit(postgres_dsn).path[1:]
        await conn.execute("CREATE TABLE jobs (id text PRIMARY KEY, progress integer NOT NULL)")
        await conn.executemany(
            "INSERT INTO jobs (id, progress) VALUES ($1, $2)", [("a", 10), ("b", 100)]
        )
        rows = await conn.fetch("SELECT id, progress FROM jobs ORDER BY id")
        assert [tuple(r) for r in rows] == [("a", 10), ("b", 100)]
    finally:
        await conn.close()


async def _database_exists(server_dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(server_dsn)
    try:
        return await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name) == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("case", ["first", "second"])
async def test_each_test_gets_its_own_database(
    case: str, postgres_server: str, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        # Empty: nothing another test made is here.
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        await conn.execute("CREATE TABLE marker (case_name text)")
        await conn.execute("INSERT INTO marker VALUES ($1)", case)
    finally:
        await conn.close()
    assert name.startswith("wazza_test_")
    assert tables == 0
    _seen.append(name)
    if len(_seen) >= 2:
        earlier = _seen[-2]
        assert earlier != name
        assert not await _database_exists(postgres_server, earlier), f"{earlier} was not dropped"


async def test_drop_ends_connections_left_open(postgres_server: str) -> None:
    """A test that forgets a connection (or a pool) must not stop its database being dropped."""
    name = f"wazza_test_{uuid.uuid4().hex}"
    dsn = await create_database(postgres_server, name)
    conn = await asyncpg.connect(dsn)
    try:
        await drop_database(postgres_server, name)
        assert not await _database_exists(postgres_server, name)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()


@pytest.mark.slow
async def test_private_server_fallback_works() -> None:
    """The fresh-machine path: a server from the pgserver wheel (as root: run as the unprivileged
    user pgserver makes), reached over its unix socket, then stopped. Runs even where a server on
    5432 exists, so that CI proves it."""
    started = time.monotonic()
    dsn, stop = await asyncio.to_thread(start_private_server)
    try:
        startup = time.monotonic() - started
        assert "127.0.0.1" not in dsn, dsn
        assert "host=/" in dsn, dsn
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            # It is a private server, not the machine's one: its data directory is ours.
            data_dir = await conn.fetchval("SHOW data_directory")
            assert Path(data_dir).name == "pgdata"
            assert Path(data_dir).parent.name.startswith("wazza-pg-")
        finally:
            await conn.close()
        # The per-test database helpers work against it too.
        db_dsn = await create_database(dsn, "wazza_test_private")
        conn = await asyncpg.connect(db_dsn, timeout=10)
        try:
            assert await conn.fetchval("SELECT current_database()") == "wazza_test_private"
        finally:
            await conn.close()
        await drop_database(dsn, "wazza_test_private")
    finally:
        await asyncio.to_thread(stop)
    assert not await asyncio.to_thread(Path(data_dir).exists)
    assert not await asyncio.to_thread(server_reachable, dsn)
    assert startup < 20, f"the private server took {startup:.1f} s to start"


def test_named_server_must_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server named on purpose that does not answer is an error, not a silent fallback."""
    monkeypatch.setenv(ENV_VAR, "postgresql://postgres@127.0.0.1:1/postgres")
    with pytest.raises(RuntimeError, match=ENV_VAR):
        postgres_server_dsn()


def test_named_server_is_used(monkeypatch: pytest.MonkeyPatch, postgres_server: str) -> None:
    monkeypatch.setenv(ENV_VAR, postgres_server)
    dsn, cleanup = postgres_server_dsn()
    cleanup()
    assert dsn == postgres_server
