"""Run a small synchronous chore every few seconds while a context is open, and once at its end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

log = logging.getLogger("wazza.periodic")


@contextlib.asynccontextmanager
async def periodically(seconds: float, chore: Callable[[], None]) -> AsyncIterator[None]:
    """Call `chore` every `seconds` in the background, and once more when the context ends.
    A chore that raises is logged and called again next time: it must not stop for good."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                chore()
            except Exception:
                log.exception("periodic %s failed", getattr(chore, "__qualname__", chore))

    task = asyncio.create_task(loop(), name=f"every-{seconds:g}s")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        chore()
