"""What one client may cost the ingester before it is even authenticated (invariant 8 of
docs/architecture.md).

The webhook endpoint faces the internet, and a signature is only checked once a whole body has
arrived. Everything before that is bounded here and in `app.WebhookHandler`:

- **No decompression.** The server never inflates a body (aiohttp's `auto_decompress` is off); a
  request declaring a Content-Encoding other than identity is refused with 415 before its body
  is read (Wazza does not compress). A gzip bomb costs the bytes it sends, nothing more.
- **A deadline on the request line and headers.** aiohttp's keep-alive timer closes a connection
  that has not completed a request within `headers_seconds` of its start or of its previous
  answer: one header line a second (slowloris) holds a connection that long, not forever.
- **A deadline on the body** (`body_seconds`, in the handler: a 408 and the connection closed).
- **A cap on open connections** (`max_connections`): past it a new connection is answered a
  JSON 503 at once and closed, so descriptors and memory stay bounded.
- **A cap on body bytes held** across the requests being read (`BodyBudget`, in the handler):
  past it a request declaring a large body is answered a JSON 503 with Retry-After before its
  body is read; small bodies (webhooks) are always read, bounded by the connection cap.
- **Malformed HTTP** gets a JSON 400 that echoes nothing of the request (aiohttp's own echoes
  the offending line, which may hold a signature), and a log line at most every few seconds,
  without a traceback (aiohttp writes one per request: an attacker could flood the log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger("wazza.ingest.edges")

# Malformed requests are said in one log line per this many seconds at most, with the number of
# those not said since: enough to see an attack, too few to flood the log.
_BAD_REQUEST_LOG_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The bounds of the server's edges (from IngestSettings: `of`)."""

    headers_seconds: float
    """A connection's request line and headers must arrive within this long (and an idle
    keep-alive connection is closed after it)."""
    max_connections: int
    """Open connections past this are answered 503 and closed at once."""
    retry_after_seconds: int
    """The Retry-After of those 503s."""

    @classmethod
    def of(cls, settings: Any) -> EdgeLimits:
        """The limits an IngestSettings sets."""
        return cls(
            headers_seconds=settings.headers_timeout_seconds,
            max_connections=settings.max_connections,
            retry_after_seconds=settings.retry_after_seconds,
        )


# A body this small is always read: webhooks are a few hundred bytes, and what small bodies can
# hold together is already bounded by the connection cap (512 x 64 KiB = 32 MiB). The budget is
# for the large ones, so that slow large bodies cannot crowd the real webhooks out.
SMALL_BODY_BYTES = 64 * 1024


class BodyBudget:
    """Body bytes that requests being read may hold together; a request declaring more than
    SMALL_BODY_BYTES (or declaring no length) takes its share before reading, and gives it back
    after."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        """Bytes taken by requests reading their bodies now."""

    def take(self, size: int) -> bool:
        """Take `size` bytes; False (nothing taken) when they would pass the budget."""
        if size <= SMALL_BODY_BYTES:
            return True
        if self.held + size > self.max_bytes:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        """Give back what `take` took."""
        if size > SMALL_BODY_BYTES:
            self.held -= size


def _json_response(status: int, reason: str, detail: str, **headers: str) -> web.Response:
    response = web.Response(
        status=status,
        body=orjson.dumps({"error": reason, "detail": detail}),
        content_type="application/json",
        headers=headers or None,
    )
    response.force_close()
    return response


class _Said:
    """Rate-limited logging of malformed requests (one line per _BAD_REQUEST_LOG_SECONDS)."""

    last = 0.0
    quiet = 0


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with the connection cap and JSON errors of this module."""

    limits: EdgeLimits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        over = manager is not None and len(manager.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if over:
            # A TCP connection: a write transport, though uvloop's is no asyncio.Transport
            # subclass (an isinstance check here left the connection open and unanswered).
            stream = cast(asyncio.Transport, transport)
            body = orjson.dumps({"error": "too_many_connections", "detail": "try again later"})
            stream.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                + f"Retry-After: {self.limits.retry_after_seconds}\r\n".encode()
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            self.force_close()
            transport.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer began: the connection is broken
            raise ConnectionError("the response was sent already")
        now = time.monotonic()
        if now - _Said.last >= _BAD_REQUEST_LOG_SECONDS:
            log.warning(
                "malformed request from %s answered %d (%s)%s",
                request.remote,
                status,
                type(exc).__name__ if exc is not None else "no detail",
                f"; {_Said.quiet} more since the last line" if _Said.quiet else "",
            )
            _Said.last, _Said.quiet = now, 0
        else:
            _Said.quiet += 1
        if status >= 500:
            return _json_response(500, "internal_error", "try again later")
        return _json_response(status, "bad_request", "the request is not valid HTTP")


class _GuardedServer(web.Server):
    """A server whose connections are `GuardedRequestHandler`s."""

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


def guard(runner: web.AppRunner, limits: EdgeLimits) -> None:
    """Make the connections `runner` serves from now on guarded by `limits` (call after
    `setup()`, before a site starts: each connection takes its handler class when it opens)."""
    server: Any = runner.server
    assert server is not None, "runner.setup() first"  # noqa: S101
    # The application makes a plain aiohttp Server; its connections are made by calling it. The
    # same object, with only that call changed, so every setting aiohttp gave it stays.
    server.__class__ = _GuardedServer
    GuardedRequestHandler.limits = limits


async def start_runner(app: web.Application, limits: EdgeLimits, **options: Any) -> web.AppRunner:
    """The application's runner, set up, its server's connections guarded by `limits`
    (`options`: more web.AppRunner options, such as shutdown_timeout)."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, **server_settings(limits), **options
    )
    await runner.setup()
    guard(runner, limits)
    return runner


def server_settings(limits: EdgeLimits) -> dict[str, Any]:
    """The aiohttp server options of these edges (for web.AppRunner)."""
    return {
        "auto_decompress": False,
        # aiohttp closes a connection that waits for a request this long (from its start or its
        # last answer), even while header bytes trickle in: the headers' deadline.
        "keepalive_timeout": limits.headers_seconds,
        # A request refused before its body was read is closed at once, its body never drained:
        # aiohttp would otherwise go on reading (and, with a Content-Encoding, inflating) it for
        # up to 10 s after the answer.
        "lingering_time": 0,
    }
