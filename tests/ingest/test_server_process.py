"""`wazza-ingest` as the operator runs it: a real process, a real port, a real broker.

Each test starts the console script as a subprocess, talks to it over HTTP and reads what it
published back from the broker. Every process is killed, with its descendants, when a test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.metrics import FOLD_SECONDS
from tests.support.env import BIN, SECRET, subprocess_env
from tests.support.kafka import Topics, make_topics, read_topic
from tests.support.processes import Running, alive, running, stat_fields
from tests.support.signing import completed_body, sign_wazza
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker, broker_binary, free_port, port_in_use

pytestmark = pytest.mark.slow

WEBHOOK_PATH = "/api/webhooks/wazza"
# The ingester imports, binds and reaches the broker in well under a second; a loaded CI
# machine gets ample room before the test gives up.
START_SECONDS = 20.0
# The supervisor's own bound: 10 s shutdown timeout per worker plus the producer's flush.
STOP_SECONDS = 20.0
# A command that refuses to start does so right after its imports.
REFUSAL_SECONDS = 20.0


# --- processes --------------------------------------------------------------------------------


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process."""
    fields = stat_fields(pid)
    return None if fields is None else int(fields[1])


def ingest_env(broker: LocalBroker, topics: Topics, **extra: str) -> dict[str, str]:
    """The environment of an ingester pointed at the test broker and this test's topics."""
    return subprocess_env(
        WAZZA_WEBHOOK_SECRETS=SECRET,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_QUARANTINE_TOPIC=topics.quarantine,
        **extra,
    )


def ingest_argv(port: int, *more: str) -> list[str]:
    return [str(BIN / "wazza-ingest"), "--port", str(port), *more]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object (fails on a line that is not one)."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            doc = orjson.loads(line)
            assert isinstance(doc, dict), line
            lines.append(doc)
    return lines


def count_log(proc: Running, msg: str) -> int:
    """How many JSON lines on its stdout so far carry this `msg`."""
    count = 0
    for line in proc.stdout.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(line)
            count += isinstance(doc, dict) and doc.get("msg") == msg
    return count


# --- HTTP -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_connections() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a new connection for every request, so workers share the load."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def wait_readyz(
    proc: Running,
    port: int,
    expected: tuple[int, Any] | None = None,
    timeout: float = START_SECONDS,
) -> None:
    """Until GET /readyz answers `expected` (status, JSON body), or 200 when None; fails when
    the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    async with fresh_connections() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    if expected is None and resp.status == 200:
                        return
                    if expected is not None and (resp.status, await resp.json()) == expected:
                        return
            if proc.proc.poll() is not None:
                await proc.wait_exit(5)
                pytest.fail(f"exited with {proc.proc.returncode} before ready\n{proc.output()}")
            if time.monotonic() > deadline:
                want = "200" if expected is None else repr(expected)
                pytest.fail(f"/readyz not {want} within {timeout} s\n{proc.output()}")
            await asyncio.sleep(0.05)


async def wait_ready(proc: Running, port: int, timeout: float = START_SECONDS) -> None:
    """Until GET /readyz answers 200; fails when the process exits or the time runs out."""
    await wait_readyz(proc, port, timeout=timeout)


async def post(
    session: aiohttp.ClientSession,
    port: int,
    body: bytes | AsyncIterator[bytes],
    headers: dict[str, str],
) -> int:
    async with session.post(
        f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        data=body,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as resp:
        await resp.read()
        return resp.status


def job_id() -> str:
    return f"job_{uuid.uuid4().hex[:16]}"


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return sign_wazza(secret, body, int(time.time()))


def accepted_count(exposition: str) -> float:
    """The value of wazza_ingest_requests_total{outcome="accepted"} in a scrape."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if (
                sample.name == "wazza_ingest_requests_total"
                and sample.labels.get("outcome") == "accepted"
            ):
                return sample.value
    pytest.fail(f"no accepted requests counter in /metrics:\n{exposition}")


# --- a slow broker ----------------------------------------------------------------------------


class SlowLink:
    """A TCP relay that hands on everything a broker sends `delay` seconds late.

    Tansu answers in microseconds; behind this relay every ack takes `delay`, so requests are
    reliably still waiting for their ack when the test sends SIGTERM.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.target = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.append(client_w)
        broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers.append(broker_w)
        for task in (
            asyncio.create_task(self._pump(client_r, broker_w, 0.0)),
            asyncio.create_task(self._pump(broker_r, client_w, self.delay)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float
    ) -> None:
        # Every chunk keeps its own deadline, so the delay is a latency, not a throttle.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    sink.close()
                    return
                sink.write(chunk)
                await sink.drain()

        delivery = asyncio.create_task(deliver())
        try:
            while chunk := await source.read(65536):
                queue.put_nowait((loop.time() + delay, chunk))
            queue.put_nowait((loop.time() + delay, b""))
            await delivery
        except (ConnectionError, OSError):
            sink.close()
        finally:
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await delivery

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def slow_broker(delay: float) -> AsyncIterator[str]:
    """A Tansu of its own that clients reach only through a SlowLink; yields its address."""
    link = SlowLink(delay)
    await link.start()
    link.target = free_port()
    try:
        listen = f"tcp://127.0.0.1:{link.target}"
        advertised = f"tcp://127.0.0.1:{link.port}"  # clients come back through the relay
        argv = [
            broker_binary(), "broker", "--listener-url", listen,
            "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        with running(argv, subprocess_env()) as tansu:
            await tansu.wait_for(
                lambda _: port_in_use("127.0.0.1", link.target), START_SECONDS, "Tansu to listen"
            )
            yield f"127.0.0.1:{link.port}"
    finally:
        await link.close()


def in_flight(exposition: str) -> float:
    """The value of wazza_ingest_requests_in_flight in a scrape."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "wazza_ingest_requests_in_flight":
                return sample.value
    pytest.fail(f"no in-flight gauge in /metrics:\n{exposition}")


# --- tests ------------------------------------------------------------------------------------


async def test_two_workers_both_serve_count_together_and_stop_cleanly_on_sigterm(
    broker: LocalBroker, topics: Topics
) -> None:
    port = free_port()
    sent = 60
    with running(ingest_argv(port, "--workers", "2"), ingest_env(broker, topics)) as proc:
        # /readyz proves one worker ready; each worker logs its broker connection once.
        await wait_ready(proc, port)
        await proc.wait_for(
            lambda p: count_log(p, "broker connected") >= 2, START_SECONDS, "both workers"
        )
        workers = proc.descendants()
        assert len(workers) == 2, f"expected 2 worker processes, found {workers}"
        assert {parent_of(pid) for pid in workers} == {proc.pid}

        ids = [job_id() for _ in range(sent)]
        limit = asyncio.Semaphore(10)

        async def send(session: aiohttp.ClientSession, job: str) -> int:
            body = completed_body(job)
            async with limit:
                return await post(session, port, body, signed(body))

        async with fresh_connections() as session:
            statuses = await asyncio.gather(*(send(session, job) for job in ids))
            assert statuses == [200] * sent

            records = await read_topic(broker.bootstrap_servers, topics.raw, expect=sent)
            assert sorted(r.key.decode() for r in records if r.key) == sorted(ids)
            ingesters = {contract.headers_dict(r.headers)[contract.H_INGESTER] for r in records}
            pids = {int(value.decode().rsplit(":", 1)[1]) for value in ingesters}
            assert pids == workers, f"records came from {pids}, the workers are {workers}"

            # Each worker folds its counts into the shared metrics every FOLD_SECONDS (and the
            # one scraped, at once): the sum over both is whole within that.
            deadline = time.monotonic() + 10 * FOLD_SECONDS
            while True:
                async with session.get(
                    f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
                ) as resp:
                    assert resp.status == 200
                    exposition = await resp.text()
                if accepted_count(exposition) >= sent or time.monotonic() > deadline:
                    break
                await asyncio.sleep(FOLD_SECONDS / 5)
        assert accepted_count(exposition) == sent

        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.wait_exit(STOP_SECONDS) == 0, proc.output()
        left = {pid for pid in workers if alive(pid)}
        assert not left, f"workers still alive after the supervisor exited: {left}"


async def test_sigterm_while_requests_wait_for_their_ack_answers_them_and_keeps_every_200() -> None:
    port = free_port()
    sent = 50
    async with slow_broker(delay=0.2) as bootstrap:
        topics = await make_topics(bootstrap)
        env = subprocess_env(
            WAZZA_WEBHOOK_SECRETS=SECRET,
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            KAFKA_ENABLE_IDEMPOTENCE="false",
            WAZZA_RAW_TOPIC=topics.raw,
            WAZZA_QUARANTINE_TOPIC=topics.quarantine,
        )
        ids = [job_id() for _ in range(sent)]
        with running(ingest_argv(port), env) as proc:
            await wait_ready(proc, port)

            async def send(session: aiohttp.ClientSession, job: str) -> int:
                body = completed_body(job)
                return await post(session, port, body, signed(body))

            async with fresh_connections() as session:
                tasks = [asyncio.create_task(send(session, job)) for job in ids]
                try:
                    # The server's own gauge says the requests are waiting for their ack.
                    waiting = 0.0
                    async with asyncio.timeout(5):
                        while waiting < 10:
                            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                                waiting = in_flight(await resp.text())
                    proc.proc.send_signal(signal.SIGTERM)
                    async with asyncio.timeout(STOP_SECONDS):
                        results = await asyncio.gather(*tasks, return_exceptions=True)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            code = await proc.wait_exit(STOP_SECONDS)

        for result in results:
            # A request refused once the listener closed is fine (the sender retries it);
            # anything but a client-side connection error would be a bug in this test.
            if isinstance(result, BaseException) and not isinstance(result, aiohttp.ClientError):
                raise result
        answered = {
            job: status for job, status in zip(ids, results, strict=True) if isinstance(status, int)
        }
        assert set(answered.values()) == {200}, f"{answered}\n{proc.output()}"
        assert len(answered) >= waiting, "requests in flight at SIGTERM went unanswered"
        assert code == 0, proc.output()

        records = await read_topic(bootstrap, topics.raw, expect=len(answered))
        missing = set(answered) - {r.key.decode() for r in records if r.key}
        assert not missing, f"answered 200 but not in the topic: {missing}"


@pytest.mark.parametrize(
    ("variable", "overrides"),
    [
        pytest.param("WAZZA_WEBHOOK_SECRETS", {"WAZZA_WEBHOOK_SECRETS": None}, id="no-secret"),
        pytest.param(
            "WAZZA_PUBLISH_TIMEOUT_SECONDS",
            {"WAZZA_PUBLISH_TIMEOUT_SECONDS": "9"},
            id="publish-timeout-past-the-senders-deadline",
        ),
    ],
)
def test_a_configuration_error_exits_2_naming_the_variable_without_a_traceback(
    broker: LocalBroker, topics: Topics, variable: str, overrides: dict[str, str | None]
) -> None:
    env = ingest_env(broker, topics)
    for name, value in overrides.items():
        if value is None:
            del env[name]
        else:
            env[name] = value

    result = subprocess.run(
        ingest_argv(free_port()), env=env, capture_output=True, text=True, timeout=REFUSAL_SECONDS
    )

    assert result.returncode == 2, result
    assert variable in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert SECRET not in result.stderr + result.stdout


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port someone else listens on (without SO_REUSEPORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_already_taken_stops_the_ingester_with_a_clear_message(
    broker: LocalBroker, topics: Topics, taken_port: int, workers: str
) -> None:
    started = time.monotonic()
    result = subprocess.run(
        ingest_argv(taken_port, "--workers", workers),
        env=ingest_env(broker, topics),
        capture_output=True,
        text=True,
        timeout=REFUSAL_SECONDS,
    )

    assert result.returncode != 0, result
    assert f"127.0.0.1:{taken_port}" in result.stderr
    assert "in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # Not a restart loop: a worker that cannot bind is not restarted again and again.
    assert time.monotonic() - started < 10


async def test_each_request_gets_one_json_log_line_without_secret_or_signature(
    broker: LocalBroker, topics: Topics
) -> None:
    port = free_port()
    accepted = completed_body(job_id())
    good = signed(accepted)
    forged_body = completed_body(job_id())
    forged = signed(forged_body, secret="not-the-registered-secret")
    text_body = completed_body(job_id())
    as_text = {**signed(text_body), "Content-Type": "text/plain"}

    with running(ingest_argv(port), ingest_env(broker, topics)) as proc:
        await wait_ready(proc, port)
        async with fresh_connections() as session:
            assert await post(session, port, accepted, good) == 200
            assert await post(session, port, forged_body, forged) == 401
            assert await post(session, port, text_body, as_text) == 415
        await proc.wait_for(lambda p: count_log(p, "webhook") >= 3, 10, "three request lines")
        proc.proc.send_signal(signal.SIGTERM)
        assert await proc.wait_exit(STOP_SECONDS) == 0, proc.output()

    lines = json_lines(proc.stdout)
    requests = [line for line in lines if line.get("msg") == "webhook"]
    assert [(r["outcome"], r["status"]) for r in requests] == [
        ("accepted", 200),
        ("invalid_signature", 401),
        ("unsupported_media_type", 415),
    ]
    everything = proc.stdout + proc.stderr
    assert SECRET not in everything
    for headers in (good, forged, as_text):
        assert headers["X-Wazza-Signature"] not in everything


async def test_the_process_routes_every_path_as_the_application_declares_it(
    broker: LocalBroker, topics: Topics
) -> None:
    """The process hands webhook requests to the handler directly (ingest.app.direct_dispatch);
    every other request, and a webhook that expects `100 Continue`, still reaches the same
    answer through the application's router."""
    port = free_port()
    plain_job, expecting_job = job_id(), job_id()
    plain, expecting = completed_body(plain_job), completed_body(expecting_job)
    base = f"http://127.0.0.1:{port}"
    with running(ingest_argv(port), ingest_env(broker, topics)) as proc:
        await wait_ready(proc, port)
        async with fresh_connections() as session:
            assert await post(session, port, plain, signed(plain)) == 200
            async with session.post(
                f"{base}{WEBHOOK_PATH}",
                data=expecting,
                headers=signed(expecting),
                expect100=True,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                assert (resp.status, await resp.json()) == (200, {"received": True})
            async with session.get(f"{base}{WEBHOOK_PATH}") as resp:
                assert (resp.status, resp.headers["Allow"]) == (405, "POST")
            async with session.post(f"{base}{WEBHOOK_PATH}/", data=plain) as resp:
                assert (resp.status, (await resp.json())["error"]) == (404, "not_found")
            async with session.get(f"{base}/healthz") as resp:
                assert (resp.status, await resp.json()) == (200, {"status": "ok"})
            async with session.get(f"{base}/elsewhere") as resp:
                assert (resp.status, (await resp.json())["error"]) == (404, "not_found")
        records = await read_topic(broker.bootstrap_servers, topics.raw, expect=2)
    assert sorted((r.key, r.value) for r in records) == sorted(
        [(plain_job.encode(), plain), (expecting_job.encode(), expecting)]
    )


async def test_left_idempotent_against_the_local_broker_it_says_which_setting_to_change(
    tansu_broker: LocalBroker,
) -> None:
    """The local broker refuses idempotent producers, and idempotence is on by default (for
    Apache Kafka): the ingester answers 503 (nothing published), and its /readyz and its log
    say the broker refused it and name KAFKA_ENABLE_IDEMPOTENCE, rather than 'unreachable'."""
    broker = tansu_broker
    topics = await make_topics(broker.bootstrap_servers)
    port = free_port()
    env = ingest_env(broker, topics)
    del env["KAFKA_ENABLE_IDEMPOTENCE"]
    body = completed_body(job_id())
    refused = {
        "status": "not_ready",
        "broker": "refused",
        "reason": "idempotence_refused",
        "detail": "the broker did not give the idempotent producer an id (UnknownError); a "
        "broker without idempotence, such as the local one (wazza-hooks broker), needs "
        "KAFKA_ENABLE_IDEMPOTENCE=false",
    }
    with running(ingest_argv(port), env) as proc:
        await wait_readyz(proc, port, (503, refused))
        async with fresh_connections() as session:
            assert await post(session, port, body, signed(body)) == 503
        errors = [
            line
            for line in json_lines(proc.stdout)
            if line.get("level") == "error" and "KAFKA_ENABLE_IDEMPOTENCE=false" in line["msg"]
        ]
        assert errors, proc.output()
        assert errors[0]["msg"].startswith(f"{broker.bootstrap_servers}: {refused['detail']}")
        assert "unreachable" not in proc.stdout, proc.output()
        assert "Traceback" not in proc.stderr, proc.output()
    assert await read_topic(broker.bootstrap_servers, topics.raw, expect=0, timeout=1) == []


def test_a_refused_start_logs_no_error_about_an_unclosed_broker_client(
    broker: LocalBroker, topics: Topics, taken_port: int
) -> None:
    result = subprocess.run(
        ingest_argv(taken_port),
        env=ingest_env(broker, topics),
        capture_output=True,
        text=True,
        timeout=REFUSAL_SECONDS,
    )

    assert result.returncode == 1, result
    errors = [line for line in json_lines(result.stdout) if line.get("level") == "error"]
    assert not errors, f"error lines logged while refusing to start: {errors}"


async def test_a_request_whose_body_is_still_arriving_at_sigterm_is_answered_in_time(
    broker: LocalBroker, topics: Topics
) -> None:
    port = free_port()
    job = job_id()
    body = completed_body(job)
    headers = {**signed(body), "Content-Length": str(len(body))}
    head_sent = asyncio.Event()
    gate = asyncio.Event()

    async def in_two_parts() -> AsyncIterator[bytes]:
        # The head and the first bytes now; the rest once SIGTERM has reached the server.
        yield body[:16]
        head_sent.set()
        await gate.wait()
        yield body[16:]

    with running(ingest_argv(port), ingest_env(broker, topics)) as proc:
        await wait_ready(proc, port)
        async with fresh_connections() as session:
            request = asyncio.create_task(post(session, port, in_two_parts(), headers))
            try:
                async with asyncio.timeout(5):
                    await head_sent.wait()
                await asyncio.sleep(0.3)  # the server reads the head and starts the handler
                proc.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.2)
                gate.set()
                # The sender gives up after 5 s: an answer after that is no answer.
                done, _ = await asyncio.wait({request}, timeout=5)
            finally:
                gate.set()
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
        assert done, f"a request in flight at SIGTERM got no answer within 5 s\n{proc.output()}"
        status = request.result()
        assert status == 200
        assert await proc.wait_exit(STOP_SECONDS) == 0, proc.output()

    records = await read_topic(broker.bootstrap_servers, topics.raw, expect=1)
    assert [r.key for r in records] == [job.encode()]
