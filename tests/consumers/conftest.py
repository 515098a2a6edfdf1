"""Every store test runs against SQLite AND PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumers.store import Store, open_store

from ..postgres import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str
) -> AsyncIterator[str]:
    """A fresh store's URL: a SQLite file, or a PostgreSQL database of the test's own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/wazza.db"
        return
    async with fresh_database(postgres_server) as dsn:
        yield dsn


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The store at `store_url`, migrated."""
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
