"""JSON log lines on stdout: one object a line, for people and for log shippers alike.

Lifecycle messages go through the `logging` module. The per-request line of a hot path goes
through `JsonLines.emit`, which skips `logging`'s record machinery and only appends the encoded
line to a list: measured, writing each line into stdout's buffer cost a tenth of the
ingester's time (the buffer's write calls and the system calls behind its small flushes);
`flush_every` writes the list out in one call a few times a second.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import sys
from typing import IO, Any

import orjson

from .periodic import periodically

# Log lines reach a terminal or a shipper within this long even when traffic is light.
_FLUSH_SECONDS = 0.25
# Past this many pending lines (a few MB at most) they are written at once, whatever the clock.
_MAX_PENDING_LINES = 10_000


class JsonLines:
    """Writes dicts as JSON lines to a binary stream."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._pending: list[bytes] = []

    def emit(self, fields: dict[str, Any]) -> None:
        """Queue one line; never raises for an unserialisable value (it is written as text)."""
        try:
            line = orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            line = orjson.dumps({k: str(v) for k, v in fields.items()}) + b"\n"
        self._pending.append(line)
        if len(self._pending) >= _MAX_PENDING_LINES:
            self.flush()

    def write_now(self, line: bytes) -> None:
        """Write one line at once, after those queued (lifecycle messages)."""
        self._pending.append(line)
        self.flush()

    def flush(self) -> None:
        """Write the queued lines out. A closed or broken stdout must not fail a request."""
        pending, self._pending = self._pending, []
        with contextlib.suppress(OSError, ValueError):
            if pending:
                self._stream.write(b"".join(pending))
            self._stream.flush()

    def flush_every(
        self, seconds: float = _FLUSH_SECONDS
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """Flush periodically while the context is open, and once at its end."""
        return periodically(seconds, self.flush)


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
        self._lines.write_now(self.format(record).encode() + b"\n")


class _RefusedConnections(logging.Filter):
    """Of aiokafka's records, keeps only the connection failures that are the broker refusing
    this client's credentials or certificate, rewritten to name the settings to check; every
    other record passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        from aiokafka.errors import AuthenticationFailedError, SaslAuthenticationFailed

        args = record.args if isinstance(record.args, tuple) else ()
        cause = args[-1] if args else None
        if isinstance(cause, SaslAuthenticationFailed | AuthenticationFailedError):
            what = "refused the login (check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"
        elif isinstance(cause, ssl.SSLError):
            what = "refused the TLS handshake (check KAFKA_SSL_* and the broker's certificate)"
        else:
            return False
        host, port = (args[0], args[1]) if len(args) >= 3 else ("?", "?")
        record.msg = "authentication failed: the broker %s:%s %s: %s"
        record.args = (host, port, what, cause)
        return True


def setup_logging(service: str, level: str = "INFO") -> JsonLines:
    """Send `logging` output as JSON lines to stdout; returns the writer for hot-path lines."""
    lines = JsonLines()
    handler = _LineHandler(lines)
    handler.setFormatter(_JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every failed reconnect at ERROR with a traceback; our own lines say it once.
    # Except a refused login or TLS handshake: the client then only says it cannot bootstrap,
    # which reads like a broker that is down, while aiokafka's own line (no traceback) names the
    # cause. The handler lets that one through, rewritten, and drops aiokafka's others.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    handler.addFilter(_RefusedConnections())
    # asyncpg's pool logs each failed reconnect with a traceback; the consumer's own line says
    # the store is unreachable and that it retries.
    logging.getLogger("asyncpg").setLevel(logging.ERROR)
    return lines
