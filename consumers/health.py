"""A consumer service's HTTP endpoints, served from its event loop: `/metrics` (Prometheus),
`/healthz` (the process and its loop answer) and `/readyz` (joined its group, store reachable).

Liveness asks nothing of the broker or the store: a database outage is waited out by the
runtime, and restarting the process would not end it. Readiness says whether this instance is
doing its work now, for rollouts and dashboards.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class Readiness(Protocol):
    """What `/readyz` asks (the runtime)."""

    def not_ready(self) -> str | None:
        """Why not ready, or None."""


class HealthServer:
    """The endpoints on `host:port`; `runtime` is set once the store is open."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.runtime: Readiness | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; raises OSError when the port is taken."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = "starting" if self.runtime is None else self.runtime.not_ready()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready", "reason": reason}, status=503)
