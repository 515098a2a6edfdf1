"""JSON log lines on stdout: one object a line, for people and for log shippers alike.

Lifecycle messages go through the `logging` module. The per-request line of a hot path goes
through `JsonLines.emit`, which skips `logging`'s record machinery (a few microseconds a line,
a real share of a request that costs fifty) and writes into stdout's buffer; `flush_every`
keeps what is written visible within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import IO, Any

import orjson

# Log lines reach a terminal or a shipper within this long even when traffic is light.
_FLUSH_SECONDS = 0.25


class JsonLines:
    """Writes dicts as JSON lines to a binary stream."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer

    def emit(self, fields: dict[str, Any]) -> None:
        """Write one line; never raises for an unserialisable value (it is written as text)."""
        try:
            line = orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            line = orjson.dumps({k: str(v) for k, v in fields.items()}) + b"\n"
        # A closed or broken stdout must not fail a request.
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(line)

    def flush(self) -> None:
        """Push buffered lines out."""
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    @contextlib.asynccontextmanager
    async def flush_every(self, seconds: float = _FLUSH_SECONDS) -> AsyncIterator[None]:
        """Flush periodically while the context is open, and once at its end."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(seconds)
                self.flush()

        task = asyncio.create_task(loop(), name="log-flush")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.flush()


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(fields, default=str).decode()


class _LineHandler(logging.Handler):
    def __init__(self, lines: JsonLines) -> None:
        super().__init__()
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines._stream.write(self.format(record).encode() + b"\n")
            self._lines.flush()
        except (OSError, ValueError):
            pass


def setup_logging(service: str, level: str = "INFO") -> JsonLines:
    """Send `logging` output as JSON lines to stdout; returns the writer for hot-path lines."""
    lines = JsonLines()
    handler = _LineHandler(lines)
    handler.setFormatter(_JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every failed reconnect at ERROR with a traceback; our own lines say it once.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return lines


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000
