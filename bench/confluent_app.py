"""A comparison point for the ingest benchmark, not a product: verify as the baseline does,
then publish with confluent-kafka's producer (librdkafka) instead of aiokafka's.

Per request: read the body, check the HMAC and the timestamp (bench/baseline_app.py), take
the event type and jobId from the JSON, and produce the body to the raw topic keyed by jobId with
the contract's headers (acks=all, idempotence on), answering 200 only after the delivery report
says the broker acknowledged it. librdkafka's delivery callbacks run on a thread of our own that
polls the producer; each one resolves its request's future on the event loop with
`loop.call_soon_threadsafe`. No request log, no metrics: this bounds what a C client could give
the same app, and is not adopted in the product. Needs `pip install confluent-kafka` (the
benchmark installs it for its run only; it is not a dependency of the project).
Run:
    python bench/confluent_app.py PORT SECRET BOOTSTRAP [TOPIC]
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import orjson
from aiohttp import web
from confluent_kafka import KafkaException, Producer

from ingest.signature import SignatureError, VerifierConfig, verify
from wazza_hooks import contract


def build(secret: str, bootstrap: str, topic: str) -> web.Application:
    config = VerifierConfig(wazza_secrets=(secret.encode(),))
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            # The ingester's own batching: a short linger, batches as they fill.
            "linger.ms": 1,
            "client.id": "wazza-bench-confluent",
        }
    )
    stopping = threading.Event()

    def poller() -> None:
        # Delivery callbacks are served by poll(), on this thread.
        while not stopping.is_set():
            producer.poll(0.05)

    thread = threading.Thread(target=poller, name="librdkafka-poll", daemon=True)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        received_ms = int(time.time() * 1000)
        try:
            verified = verify(config, request.headers, body, received_ms / 1000)
        except SignatureError as exc:
            return web.json_response({"error": exc.reason}, status=401)
        doc = orjson.loads(body)
        headers = contract.raw_headers(
            doc["event"],
            verified.event_id or contract.body_event_id(body),
            received_ms,
            verified.timestamp,
            request.content_type,
            "bench-confluent:0",
            verified.scheme,
        )
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                loop.call_soon_threadsafe(_settle, done, None)
            else:
                loop.call_soon_threadsafe(_settle, done, KafkaException(err))

        producer.produce(
            topic, body, key=doc["jobId"].encode(), headers=headers, on_delivery=delivered
        )
        try:
            await done
        except KafkaException:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.Response(body=b'{"received":true}', content_type="application/json")

    async def on_startup(app: web.Application) -> None:
        thread.start()
        # Connected and the producer id obtained before the first request, as the ingester is.
        for _ in range(200):
            if producer.list_topics(topic, timeout=5).topics.get(topic):
                break
            await asyncio.sleep(0.05)
        print('"broker connected"', flush=True)

    async def on_cleanup(app: web.Application) -> None:
        producer.flush(10)
        stopping.set()
        thread.join(5)

    app = web.Application()
    app.router.add_post("/api/webhooks/wazza", handle)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


if __name__ == "__main__":
    web.run_app(
        build(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else contract.RAW_TOPIC),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
    )
