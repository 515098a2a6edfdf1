"""The benchmark's baseline: a minimal aiohttp app that verifies the signature and answers 200.

It does the least any honest receiver must (read the body, check the HMAC and the timestamp),
so its throughput is the ceiling of Python + aiohttp on this machine, on the event loop the
ingester runs on (uvloop), so that the ratio measures the ingester's work, not the loop. Run:
    python bench/baseline_app.py PORT SECRET
"""

from __future__ import annotations

import sys
import time

import uvloop
from aiohttp import web

from ingest.signature import SignatureError, VerifierConfig, verify


def build(secret: str) -> web.Application:
    config = VerifierConfig(wazza_secrets=(secret.encode(),))

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verify(config, request.headers, body, time.time())
        except SignatureError as exc:
            return web.json_response({"error": exc.reason}, status=401)
        return web.Response(body=b'{"received":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/webhooks/wazza", handle)
    return app


if __name__ == "__main__":
    web.run_app(
        build(sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
