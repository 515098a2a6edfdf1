"""Every store test runs against SQLite AND PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.store import Store, open_store

from ..postgres import create_database, drop_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str
) -> AsyncIterator[str]:
    """A fresh store's URL: a SQLite file, or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/wazza.db"
        return
    name = f"wazza_test_{uuid.uuid4().hex}"
    dsn = await create_database(postgres_server, name)
    try:
        yield dsn
    finally:
        await drop_database(postgres_server, name)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The store at `store_url`, migrated."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
