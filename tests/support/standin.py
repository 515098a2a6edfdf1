"""Local stand-in servers on free ports: a webhook receiver that checks signatures the way the
spec says (with tests.support.signing, not the code under test) and answers as a test scripts
it, and Wazza's registration API."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.support.signing import wazza_hex
from wazza_tools.dev.localbroker import free_port


def _compact(value: object) -> str:
    """JSON as the ingester writes it (orjson: no spaces)."""
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class Received:
    """One request the receiver took."""

    body: bytes
    timestamp: int
    signature_ok: bool
    content_type: str
    at: float


# Decides an answer for the n-th request of a body (1-based): (status, JSON payload).
Script = Callable[[bytes, int], Awaitable[tuple[int, dict[str, object]]]]


async def always_200(body: bytes, nth: int) -> tuple[int, dict[str, object]]:
    return 200, {"received": True}


@dataclass
class Receiver:
    """A webhook endpoint that records every request."""

    url: str
    received: list[Received] = field(default_factory=list)

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.received]


@contextlib.asynccontextmanager
async def receiver(secret: str, script: Script = always_200) -> AsyncIterator[Receiver]:
    """A receiver on a free port: a bad signature gets 401 invalid_signature, like the
    ingester; otherwise `script` answers."""
    seen: dict[bytes, int] = {}
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}/api/webhooks/wazza")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        ts = request.headers.get("X-Wazza-Timestamp", "")
        presented = request.headers.get("X-Wazza-Signature", "")
        good = hmac.compare_digest(presented, wazza_hex(secret, f"{ts}.".encode() + body))
        rec.received.append(
            Received(body, int(ts or 0), good, request.headers.get("Content-Type", ""), time.time())
        )
        if not good:
            refusal = {"error": "invalid_signature", "detail": "no"}
            return web.json_response(refusal, status=401, dumps=_compact)
        seen[body] = seen.get(body, 0) + 1
        status, payload = await script(body, seen[body])
        return web.json_response(payload, status=status, dumps=_compact)

    app = web.Application()
    app.router.add_post("/api/webhooks/wazza", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield rec
    finally:
        await runner.cleanup()


@dataclass
class RegistrationApi:
    """Wazza's `POST /v1/webhooks`, as the spec shows it."""

    base: str
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def registration_api(api_key: str, webhook_id: str) -> AsyncIterator[RegistrationApi]:
    """Checks method, path, auth header and body; answers `{"id": ..., ...}` like the spec's
    `webhook.id`, or 401 for another key, or 400 naming what is wrong with the body."""
    port = free_port()
    api = RegistrationApi(f"http://127.0.0.1:{port}")

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        api.requests.append((request.method, request.path, dict(request.headers), body))
        if request.method != "POST" or request.path != "/v1/webhooks":
            return web.json_response({"error": "not_found"}, status=404)
        if request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
            api.problems.append("content type")
            return web.json_response({"error": "content type"}, status=415)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or set(doc) != {"url", "events", "secret"}:
            api.problems.append(f"body {body!r}")
            return web.json_response({"error": "bad body"}, status=400)
        return web.json_response(
            {"id": webhook_id, "url": doc["url"], "events": doc["events"], "active": True},
            status=201,
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield api
    finally:
        await runner.cleanup()


async def slow(seconds: float) -> None:
    await asyncio.sleep(seconds)
