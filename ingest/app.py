"""The ingester's aiohttp application: verify, publish the raw bytes, answer after the ack.

Every answer is decided in `WebhookHandler.handle`, in the order a request is judged:
allowlist (403), method (405), declared size (413), media type and encoding (415: no body is
ever decompressed), room for the body among those being read (503), the body (413 when it
outgrows the limit while read, 408 past its deadline, 400 when malformed), signature (401),
routing fields (202 to quarantine when unusable), publish (200 after the broker's ack, else 503
with Retry-After). Nothing else can escape: an unexpected error is logged and answered 503 too,
so the sender retries and nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import hdrs, web

from wazza_hooks import contract
from wazza_hooks.logs import JsonLines
from wazza_hooks.periodic import periodically
from wazza_hooks.producers import IDEMPOTENCE_REFUSED

from . import metrics
from .allowlist import Allowlist
from .edges import BodyBudget
from .publisher import KafkaPublisher, Publisher, PublishError
from .settings import IngestSettings
from .signature import SignatureError, Verified, verify

log = logging.getLogger("wazza.ingest")


_JSON = "application/json"
_ACCEPTED: Final = b'{"received":true}'
_HEALTHY: Final = b'{"status":"ok"}'
_JSON_HEADERS: Final = {"Content-Type": _JSON}

Clock = Callable[[], float]


class IngestState:
    """What the application holds while it runs; lives under `STATE` in the app."""

    def __init__(self, publisher: Publisher | None) -> None:
        self.publisher = publisher
        """Set by the cleanup context (or given by a test) before the first request."""
        self.in_flight = 0
        """Webhook requests being handled now; a graceful stop waits for it to reach 0."""
        self.metrics = metrics.HotPath()
        """Per-request metrics, folded into Prometheus's periodically and before a scrape."""
        self.webhooks: WebhookHandler | None = None
        """The webhook path's handler, for `direct_dispatch`; set by build_app."""
        self.bodies: BodyBudget | None = None
        """The bytes the bodies being read may hold together; set by build_app."""


STATE: Final = web.AppKey("wazza_ingest_state", IngestState)


def _json(status: int, payload: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type=_JSON, headers=headers or None
    )


def _refusal(status: int, reason: str, detail: str, **headers: str) -> web.Response:
    return _json(status, {"error": reason, "detail": detail}, **headers)


def _closing(status: int, reason: str, detail: str, **headers: str) -> web.Response:
    """A refusal that closes the connection: what is left of the body is never read."""
    response = _refusal(status, reason, detail, **headers)
    response.force_close()
    return response


class _Quarantine(Exception):
    """The body is signed but unusable; `reason` says why."""

    def __init__(self, reason: str, job_id: str | None, event_type: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id
        self.event_type = event_type


def route_fields(body: bytes) -> tuple[str, str]:
    """(event type, jobId) of a body; raises _Quarantine with the reason when unusable.

    Only what routing needs is read; the body travels on byte for byte.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Quarantine("invalid_json", None, "") from None
    if not isinstance(doc, dict):
        raise _Quarantine("not_an_object", None, "")
    event = doc.get("event")
    job_id = doc.get("jobId")
    event_ok = isinstance(event, str) and 0 < len(event) <= contract.MAX_EVENT_TYPE_CHARS
    event_type = event if event_ok and isinstance(event, str) else ""
    if job_id is None:
        raise _Quarantine("missing_job_id", None, event_type)
    if not isinstance(job_id, str) or not 0 < len(job_id) <= contract.MAX_JOB_ID_CHARS:
        raise _Quarantine("invalid_job_id", None, event_type)
    if not event_ok:
        reason = "missing_event_type" if event is None else "invalid_event_type"
        raise _Quarantine(reason, job_id, "")
    # What the ingester accepts, every consumer can apply (one shared contract).
    unusable = contract.inapplicable(doc, event_type, body)
    if unusable is not None:
        raise _Quarantine(unusable, job_id, event_type)
    return event_type, job_id


class WebhookHandler:
    """Handles POSTs to the webhook path."""

    def __init__(
        self,
        settings: IngestSettings,
        state: IngestState,
        lines: JsonLines | None,
        clock: Clock = time.time,
    ) -> None:
        self._settings = settings
        self._state = state
        self._verifier = settings.verifier_config()
        self._allowlist = Allowlist(settings.allowed_networks, settings.trusted_proxies)
        self._lines = lines
        self._clock = clock
        self._retry_after = str(settings.retry_after_seconds)
        self._timeout = settings.publish_timeout_seconds
        self._body_timeout = settings.body_timeout_seconds
        self._bodies = BodyBudget(settings.max_body_bytes_in_flight)
        state.bodies = self._bodies
        self.path = settings.webhook_path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        self._state.in_flight += 1
        # The first keys set the order of the log line: time and message lead.
        fields: dict[str, Any] = {"ts": 0.0, "msg": "webhook", "outcome": "", "status": 0}
        try:
            outcome, response = await self._handle(request, fields)
        except Exception:
            log.exception("unexpected error while handling a webhook")
            outcome = "unavailable"
            fields["reason"] = "internal_error"
            response = _refusal(
                503, "internal_error", "try again later", **{"Retry-After": self._retry_after}
            )
        finally:
            self._state.in_flight -= 1
        elapsed = time.perf_counter() - started
        hot = self._state.metrics
        hot.outcomes[outcome] += 1
        hot.request_seconds.observe(elapsed)
        if self._lines is not None:
            fields["ts"] = round(time.time(), 3)
            fields["outcome"] = outcome
            fields["status"] = response.status
            fields["remote"] = request.remote
            fields["ms"] = round(elapsed * 1000, 3)
            self._lines.emit(fields)
        return response

    async def _handle(
        self, request: web.Request, fields: dict[str, Any]
    ) -> tuple[str, web.StreamResponse]:
        settings = self._settings
        headers = request.headers
        if self._allowlist.enabled and not self._allowlist.allows(
            # Every line of the header, in order: a proxy may append its own line after one
            # the client sent (HAProxy's forwardfor does), and the first alone is the client's.
            request.remote,
            ", ".join(headers.getall("X-Forwarded-For", ())) or None,
        ):
            fields["reason"] = "forbidden"
            return "forbidden", _refusal(403, "forbidden", "this address may not call")
        if request.method != "POST":
            fields["reason"] = "method_not_allowed"
            return "method_not_allowed", _refusal(
                405, "method_not_allowed", "use POST", Allow="POST"
            )
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            return "too_large", self._too_large(fields)
        # The media type without parameters ("application/json; charset=utf-8" is fine). Read
        # here rather than through request.content_type, whose full MIME parse costs more.
        content_type = headers.get("Content-Type", "")
        ctype = content_type.partition(";")[0].strip().lower()
        if ctype != _JSON and not ctype.endswith("+json"):
            fields["reason"] = "unsupported_media_type"
            return "unsupported_media_type", _refusal(
                415, "unsupported_media_type", "Content-Type must be application/json"
            )
        encoding = headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            # Never inflated (the server's auto_decompress is off): Wazza does not compress,
            # and a compressed body costs its sender nothing and us its inflated size.
            fields["reason"] = "unsupported_content_encoding"
            return "unsupported_media_type", _closing(
                415, "unsupported_content_encoding", "Content-Encoding must be identity"
            )
        share = length if length is not None else settings.max_body_bytes
        if not self._bodies.take(share):
            fields["reason"] = "overloaded"
            return "overloaded", _closing(
                503, "overloaded", "too many bodies arriving; retry later",
                **{"Retry-After": self._retry_after},
            )  # fmt: skip
        try:
            if request.content.is_eof():
                # All of it came with the headers (a webhook's usually does): the read cannot
                # wait, so no deadline is armed; arming and cancelling one cost ~5 us a request.
                body = await request.read()
            else:
                async with asyncio.timeout(self._body_timeout):
                    body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return "too_large", self._too_large(fields)
        except TimeoutError:
            fields["reason"] = "body_timeout"
            return "bad_request", _closing(
                408, "body_timeout", f"the body did not arrive within {self._body_timeout:g} s"
            )
        except web.RequestPayloadError:
            # A body that cannot be framed (a bad chunked encoding, a length never reached).
            fields["reason"] = "invalid_body"
            return "bad_request", _closing(400, "invalid_body", "the body is malformed")
        except ConnectionError:
            # The client went away mid-body: nothing to verify, nobody to answer.
            fields["reason"] = "client_disconnected"
            return "bad_request", _refusal(400, "client_disconnected", "the body did not arrive")
        finally:
            self._bodies.give(share)
        now = self._clock()
        try:
            verified = verify(self._verifier, headers, body, now)
        except SignatureError as exc:
            fields["reason"] = exc.reason
            outcome = "stale_timestamp" if exc.stale else "invalid_signature"
            return outcome, _refusal(401, exc.reason, exc.detail)
        state = self._state
        publisher = state.publisher
        assert publisher is not None, "the publisher is set before the app serves"  # noqa: S101
        envelope_id = verified.event_id or contract.body_event_id(body)
        fields["event_id"] = envelope_id
        try:
            event_type, job_id = route_fields(body)
        except _Quarantine as q:
            return await self._quarantine(
                publisher, request, body, verified, envelope_id, q, fields
            )
        fields["event"] = event_type
        fields["job_id"] = job_id
        record_headers = contract.raw_headers(
            event_type,
            envelope_id,
            int(now * 1000),
            verified.timestamp,
            content_type,
            settings.instance_id,
            verified.scheme,
        )
        published = time.perf_counter()
        try:
            await publisher.publish(
                settings.raw_topic, contract.job_key(job_id), body, record_headers, self._timeout
            )
        except PublishError as exc:
            state.metrics.publish_raw_failed.observe(time.perf_counter() - published)
            return "unavailable", self._unavailable(exc, fields)
        state.metrics.publish_raw_ok.observe(time.perf_counter() - published)
        return "accepted", web.Response(body=_ACCEPTED, headers=_JSON_HEADERS)

    async def _quarantine(
        self,
        publisher: Publisher,
        request: web.Request,
        body: bytes,
        verified: Verified,
        event_id: str,
        q: _Quarantine,
        fields: dict[str, Any],
    ) -> tuple[str, web.StreamResponse]:
        fields["reason"] = q.reason
        if q.job_id is not None:
            fields["job_id"] = q.job_id
        envelope = contract.RawEnvelope(
            event_type=q.event_type,
            event_id=event_id,
            received_at_ms=int(self._clock() * 1000),
            signature_timestamp=verified.timestamp,
            content_type=request.headers.get("Content-Type", ""),
            ingester=self._settings.instance_id,
            scheme=verified.scheme,
        )
        key = None if q.job_id is None else contract.job_key(q.job_id)
        published = time.perf_counter()
        try:
            await publisher.publish(
                self._settings.quarantine_topic,
                key,
                body,
                contract.quarantine_headers(envelope, q.reason),
                self._timeout,
            )
        except PublishError as exc:
            self._state.metrics.publish_quarantine_failed.observe(time.perf_counter() - published)
            return "unavailable", self._unavailable(exc, fields)
        self._state.metrics.publish_quarantine_ok.observe(time.perf_counter() - published)
        return "quarantined", _json(202, {"received": True, "quarantined": q.reason})

    def _too_large(self, fields: dict[str, Any]) -> web.Response:
        fields["reason"] = "too_large"
        response = _refusal(413, "too_large", f"body exceeds {self._settings.max_body_bytes} bytes")
        # The rest of the body is not read; closing the connection is cheaper than draining it.
        response.force_close()
        return response

    def _unavailable(self, exc: PublishError, fields: dict[str, Any]) -> web.Response:
        fields["reason"] = "broker_unavailable"
        fields["detail"] = str(exc)
        return _refusal(
            503,
            "broker_unavailable",
            "the event could not be stored; retry later",
            **{"Retry-After": self._retry_after},
        )


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process serves HTTP."""
    return web.Response(body=_HEALTHY, content_type=_JSON)


async def readyz(request: web.Request) -> web.Response:
    """Ready: the broker answers now. 503 otherwise, so a load balancer routes around us."""
    publisher = request.app[STATE].publisher
    if publisher is not None and await publisher.ready():
        return _json(200, {"status": "ready", "broker": "up"})
    problem = publisher.problem if publisher is not None else None
    if problem is not None:
        return _json(
            503,
            {
                "status": "not_ready",
                "broker": "refused",
                "reason": IDEMPOTENCE_REFUSED,
                "detail": problem,
            },
        )
    return _json(503, {"status": "not_ready", "broker": "down"})


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus exposition (aggregated over worker processes in multiprocess mode)."""
    state = request.app[STATE]
    state.metrics.fold(state.in_flight)
    return web.Response(
        body=metrics.exposition(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


async def not_found(request: web.Request) -> web.Response:
    """Any other path: a JSON 404 rather than aiohttp's text page."""
    return _refusal(404, "not_found", f"no route for {request.path}")


def build_app(
    settings: IngestSettings,
    *,
    publisher: Publisher | None = None,
    lines: JsonLines | None = None,
    clock: Clock = time.time,
) -> web.Application:
    """The ingester application. With no `publisher`, a Kafka producer is started with the app."""
    # aiohttp refuses bodies past client_max_size while reading them (chunked uploads included).
    app = web.Application(client_max_size=settings.max_body_bytes)
    state = IngestState(publisher)
    app[STATE] = state

    # Before the producer's context, so that its last fold comes after the producer's flush.
    async def fold_metrics(app: web.Application) -> AsyncIterator[None]:
        async with periodically(metrics.FOLD_SECONDS, lambda: state.metrics.fold(state.in_flight)):
            yield

    app.cleanup_ctx.append(fold_metrics)

    if publisher is None:

        async def kafka(app: web.Application) -> AsyncIterator[None]:
            async with KafkaPublisher(
                settings.bootstrap_servers,
                client_id=f"wazza-ingest-{settings.instance_id}",
                enable_idempotence=settings.enable_idempotence,
                linger_ms=settings.linger_ms,
                on_connection_change=metrics.set_broker_up,
                on_batch=state.metrics.batch_records.observe,
                security=settings.kafka_security,
            ) as producer:
                state.publisher = producer
                yield

        app.cleanup_ctx.append(kafka)

    if lines is not None:

        async def flush_logs(app: web.Application) -> AsyncIterator[None]:
            async with lines.flush_every():
                yield

        app.cleanup_ctx.append(flush_logs)

    handler = WebhookHandler(settings, state, lines, clock)
    state.webhooks = handler
    app.router.add_route("*", settings.webhook_path, handler.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def direct_dispatch(app: web.Application) -> Handler:
    """A request handler for the app's server that takes webhook requests straight to
    `WebhookHandler.handle`, and leaves every other request to the application as before.

    The application's own dispatch (router lookup, match info, middleware chain) is the same
    work for every request and cost about 5 us of the ~110 us a webhook costs (py-spy under
    `make bench`); the webhook path needs none of it. A request with `Expect: 100-continue`
    still goes the application's way, which answers the expectation.
    """
    handler = app[STATE].webhooks
    assert handler is not None, "build_app sets the webhook handler"  # noqa: S101
    handle = handler.handle
    path = handler.path
    via_app = app._handle

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == path and hdrs.EXPECT not in request.headers:
            return await handle(request)  # type: ignore[arg-type]
        return await via_app(request)  # type: ignore[arg-type]

    return dispatch
