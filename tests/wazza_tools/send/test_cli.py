"""`wazza-hooks send-test|simulate|verify|register` as a person types them: real processes,
real HTTP to local stand-ins, a real store filled by the consumers' own batch code."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from consumers.batch import Record, apply_batch
from consumers.service import BUILTIN
from consumers.store import Store, open_store
from tests.support.commands import Result, hooks
from tests.support.env import BIN, subprocess_env
from tests.support.env import SECRET as INGEST_SECRET
from tests.support.kafka import Topics, read_topic
from tests.support.processes import running
from tests.support.standin import receiver, registration_api
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker, free_port
from wazza_tools.send.expect import expect_job, write_expect
from wazza_tools.send.plan import JobPlan, PlanOptions, make_plan

pytestmark = pytest.mark.slow

SECRET = "cli-test-secret-0123"


def dev_folder(tmp_path: Path, secret: str = SECRET) -> Path:
    """A folder laid out as `make run` leaves it: ./var/dev-secret."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "dev-secret").write_text(secret + "\n")
    return tmp_path


def clean(result: Result) -> None:
    """A refusal is one line of explanation, never a traceback."""
    assert "Traceback" not in result.out + result.err, result


# --- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["send-test", "simulate", "verify", "register"])
async def test_help_of_each_sender_command_shows_examples_of_itself(
    command: str, tmp_path: Path
) -> None:
    result = await hooks(command, "--help", cwd=tmp_path)

    assert result.code == 0, result
    examples = result.out.split("examples:", 1)[1]
    assert f"wazza-hooks {command}" in examples


async def test_the_simulate_and_verify_help_documents_the_expect_file(tmp_path: Path) -> None:
    for command in ("simulate", "verify"):
        result = await hooks(command, "--help", cwd=tmp_path)
        assert '"format": "wazza-hooks-expect"' in result.out
        assert "anyOf" in result.out


# --- send-test ----------------------------------------------------------------------------------


async def test_send_test_signs_a_spec_shaped_event_with_the_dev_secret_and_prints_the_answer(
    tmp_path: Path,
) -> None:
    cwd = dev_folder(tmp_path)
    async with receiver(SECRET) as rec:
        result = await hooks(
            "send-test", "--event", "completed", "--job-id", "job_abc123", "--url", rec.url, cwd=cwd
        )

    assert result.code == 0, result
    assert result.out == 'HTTP 200 OK\n{"received":true}\n'
    assert "var/dev-secret" in result.err
    [got] = rec.received
    assert got.signature_ok
    assert abs(got.at - got.timestamp) <= 2
    doc = orjson.loads(got.body)
    assert list(doc) == ["event", "jobId", "status", "output", "metadata", "timestamp"]
    assert (doc["event"], doc["jobId"], doc["status"]) == (
        "job.completed",
        "job_abc123",
        "completed",
    )
    assert abs(time.mktime(time.strptime(doc["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) - got.at) < 86400


@pytest.mark.parametrize(
    ("event", "fields"),
    [
        pytest.param("processing", ["event", "jobId", "status", "progress", "timestamp"], id="p"),
        pytest.param("failed", ["event", "jobId", "status", "error", "timestamp"], id="f"),
        pytest.param("job.failed", ["event", "jobId", "status", "error", "timestamp"], id="jf"),
    ],
)
async def test_send_test_signs_with_the_first_of_the_ingesters_secrets(
    tmp_path: Path, event: str, fields: list[str]
) -> None:
    async with receiver(SECRET) as rec:
        result = await hooks(
            "send-test", "--event", event, "--url", rec.url, cwd=tmp_path,
            env=subprocess_env(WAZZA_WEBHOOK_SECRETS=f"{SECRET},an-older-one"),
        )  # fmt: skip

    assert result.code == 0, result
    [got] = rec.received
    assert got.signature_ok
    assert list(orjson.loads(got.body)) == fields


async def test_send_test_with_a_secret_the_endpoint_refuses_exits_1_saying_so(
    tmp_path: Path,
) -> None:
    async with receiver(SECRET) as rec:
        result = await hooks(
            "send-test", "--event", "failed", "--url", rec.url, "--secret", "wrong", cwd=tmp_path
        )

    assert result.code == 1, result
    assert result.out.startswith("HTTP 401 Unauthorized\n")
    assert "invalid_signature" in result.out
    assert "secret" in result.err
    clean(result)


async def test_send_test_prints_a_non_2xx_answer_and_exits_1(tmp_path: Path) -> None:
    async def unavailable(body: bytes, nth: int) -> tuple[int, dict[str, object]]:
        return 503, {"error": "unavailable", "detail": "no broker ack"}

    async with receiver(SECRET, unavailable) as rec:
        result = await hooks(
            "send-test", "--event", "processing", "--url", rec.url, "--secret", SECRET, cwd=tmp_path
        )

    assert result.code == 1, result
    assert result.out.startswith("HTTP 503 Service Unavailable\n")
    assert "no broker ack" in result.out
    clean(result)


async def test_send_test_to_an_address_nobody_listens_on_exits_1_naming_it(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/webhooks/wazza"

    result = await hooks(
        "send-test", "--event", "completed", "--url", url, "--secret", "s", cwd=tmp_path
    )

    assert result.code == 1, result
    assert url in result.err
    assert "connection refused" in result.err
    clean(result)


async def test_send_test_without_any_secret_exits_1_saying_where_it_looked(tmp_path: Path) -> None:
    result = await hooks("send-test", "--event", "completed", cwd=tmp_path)

    assert result.code == 1, result
    assert "no secret" in result.err
    assert "WAZZA_WEBHOOK_SECRETS" in result.err
    assert "var/dev-secret" in result.err
    clean(result)


async def test_an_unknown_event_is_a_usage_error(tmp_path: Path) -> None:
    result = await hooks("send-test", "--event", "cancelled", cwd=tmp_path)

    assert result.code == 2, result
    assert "completed, failed, processing" in result.err


# --- send-test --data, against a real ingester -----------------------------------------------


@dataclass(frozen=True)
class Ingester:
    """A `wazza-ingest` process on the test broker, publishing to this test's topics."""

    url: str
    bootstrap: str
    topics: Topics


@pytest.fixture
async def ingester(broker: LocalBroker, topics: Topics) -> AsyncIterator[Ingester]:
    port = free_port()
    env = subprocess_env(
        WAZZA_WEBHOOK_SECRETS=INGEST_SECRET,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        KAFKA_ENABLE_IDEMPOTENCE="false",
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_QUARANTINE_TOPIC=topics.quarantine,
    )
    with running([str(BIN / "wazza-ingest"), "--port", str(port)], env) as proc:
        base = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
                    http.get(f"{base}/readyz") as resp,
                ):
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        deadline = time.monotonic() + INGESTER_START_SECONDS
        while not await ready():
            assert proc.proc.poll() is None, proc.output()
            assert time.monotonic() < deadline, proc.output()
            await asyncio.sleep(0.1)
        yield Ingester(f"{base}/api/webhooks/wazza", broker.bootstrap_servers, topics)


# The ingester imports, binds and reaches the broker in about a second; a loaded machine gets room.
INGESTER_START_SECONDS = 30.0
# Spaces, an order of keys and an escape that compact re-encoding would all change.
HAND_WRITTEN = (
    b'{ "jobId": "job_hand_1",\n  "event": "job.completed", "status": "completed",\n'
    b'  "output": {"url": "https://cdn.example.com/a\\u00e9.mp4"},'
    b' "timestamp": "2025-10-22T10:30:00Z" }\n'
)


async def send_data(
    ingester: Ingester, cwd: Path, *argv: str | Path, stdin: bytes | None = None
) -> Result:
    """`wazza-hooks send-test ARGV --url INGESTER --secret SECRET`, with `stdin` piped in."""
    command = [
        sys.executable, "-m", "wazza_tools.cli", "send-test", *map(str, argv),
        "--url", ingester.url, "--secret", INGEST_SECRET,
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, input=stdin or b"", capture_output=True, cwd=cwd,
        env=subprocess_env(), timeout=60,
    )  # fmt: skip
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


async def test_send_test_data_signs_and_sends_the_files_exact_bytes(
    tmp_path: Path, ingester: Ingester
) -> None:
    (tmp_path / "captured.json").write_bytes(HAND_WRITTEN)

    result = await send_data(ingester, tmp_path, "--data", "captured.json")

    assert result.code == 0, result
    assert result.out.startswith("HTTP 200 OK\n"), result
    assert f"captured.json ({len(HAND_WRITTEN)} bytes)" in result.err
    [record] = await read_topic(ingester.bootstrap, ingester.topics.raw, expect=1)
    assert record.value == HAND_WRITTEN
    assert record.key == b"job_hand_1"
    headers = dict(record.headers)
    assert headers[contract.H_EVENT_ID].decode() == contract.body_event_id(HAND_WRITTEN)
    assert contract.body_event_id(HAND_WRITTEN)[:16] in result.err


async def test_send_test_data_from_stdin_with_overrides_replaces_only_those_fields(
    tmp_path: Path, ingester: Ingester
) -> None:
    result = await send_data(
        ingester, tmp_path, "--data", "-", "--job-id", "job_other", "--event", "failed",
        stdin=HAND_WRITTEN,
    )  # fmt: skip

    assert result.code == 0, result
    assert "stdin" in result.err
    assert "event, jobId replaced" in result.err
    [record] = await read_topic(ingester.bootstrap, ingester.topics.raw, expect=1)
    assert record.key == b"job_other"
    expected = orjson.loads(HAND_WRITTEN) | {"jobId": "job_other", "event": "job.failed"}
    assert orjson.loads(record.value) == expected
    assert list(orjson.loads(record.value)) == list(orjson.loads(HAND_WRITTEN))


async def test_an_override_that_changes_nothing_keeps_the_bytes(
    tmp_path: Path, ingester: Ingester
) -> None:
    (tmp_path / "p.json").write_bytes(HAND_WRITTEN)

    result = await send_data(ingester, tmp_path, "--data", "p.json", "--job-id", "job_hand_1")

    assert result.code == 0, result
    assert "replaced" not in result.err
    [record] = await read_topic(ingester.bootstrap, ingester.topics.raw, expect=1)
    assert record.value == HAND_WRITTEN


async def test_percent_sets_the_progress_of_a_processing_payload(
    tmp_path: Path, ingester: Ingester
) -> None:
    body = orjson.dumps(
        {"event": "job.processing", "jobId": "job_p", "status": "processing",
         "progress": {"percent": 10, "stage": "queued"}, "timestamp": "2025-10-22T10:30:00Z"}
    )  # fmt: skip
    (tmp_path / "p.json").write_bytes(body)

    result = await send_data(ingester, tmp_path, "--data", "p.json", "--percent", "70")

    assert result.code == 0, result
    [record] = await read_topic(ingester.bootstrap, ingester.topics.raw, expect=1)
    assert orjson.loads(record.value)["progress"] == {"percent": 70, "stage": "queued"}


async def test_a_file_that_is_not_json_is_refused_and_nothing_is_sent(
    tmp_path: Path, ingester: Ingester
) -> None:
    (tmp_path / "bad.json").write_bytes(b'{"jobId": "job_x",')

    result = await send_data(ingester, tmp_path, "--data", "bad.json")

    assert result.code == 1, result
    assert result.err.startswith("wazza-hooks send-test: bad.json is not JSON ("), result
    assert "--as-is sends it anyway" in result.err
    assert result.err.count("\n") == 1
    assert result.out == ""
    clean(result)
    for topic in (ingester.topics.raw, ingester.topics.quarantine):
        assert await read_topic(ingester.bootstrap, topic, expect=1, timeout=1.0) == []


async def test_as_is_sends_a_body_that_is_not_json_and_the_ingester_quarantines_it(
    tmp_path: Path, ingester: Ingester
) -> None:
    result = await send_data(ingester, tmp_path, "--data", "-", "--as-is", stdin=b"not json")

    assert result.code == 0, result
    assert result.out.startswith("HTTP 202 Accepted\n"), result
    [record] = await read_topic(ingester.bootstrap, ingester.topics.quarantine, expect=1)
    assert record.value == b"not json"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        pytest.param([], 2, "give --event (the spec's example) or --data FILE", id="nothing"),
        pytest.param(["--event", "completed", "--as-is"], 2, "--as-is goes with --data", id="as"),
        pytest.param(
            ["--data", "p.json", "--as-is", "--job-id", "j"], 2,
            "--as-is sends p.json unchanged: --job-id cannot apply", id="as-is-override",
        ),
        pytest.param(["--data", "nope.json"], 1, "cannot read nope.json: No such file", id="nf"),
        pytest.param(
            ["--data", "p.json", "--percent", "5"], 1, "--percent is for job.processing", id="pc"
        ),
        pytest.param(
            ["--data", "list.json", "--job-id", "j"], 1,
            "list.json is a JSON list, not an object: jobId cannot be set", id="list",
        ),
    ],
)  # fmt: skip
async def test_send_test_data_refuses_what_it_cannot_send_in_one_line(
    tmp_path: Path, argv: list[str], code: int, message: str
) -> None:
    (tmp_path / "p.json").write_bytes(HAND_WRITTEN)
    (tmp_path / "list.json").write_bytes(b"[1, 2]")

    result = await hooks("send-test", *argv, "--secret", SECRET, cwd=tmp_path)

    assert result.code == code, result
    assert message in result.err
    assert result.err.count("\n") == 1
    clean(result)


# --- simulate -----------------------------------------------------------------------------------


async def test_simulate_delivers_every_job_prints_a_summary_and_writes_the_expectations(
    tmp_path: Path,
) -> None:
    cwd = dev_folder(tmp_path)
    async with receiver(SECRET) as rec:
        result = await hooks(
            "simulate", "--jobs", 25, "--concurrency", 4, "--duplicates", 0.2, "--reorder", 0.2,
            "--url", rec.url, "--expect", "var/expect.json", "--seed", 5, cwd=cwd,
        )  # fmt: skip

    assert result.code == 0, result
    assert all(r.signature_ok for r in rec.received)
    summary = result.out
    assert f"accepted    {len(rec.received)}" in summary
    assert "given up    0" in summary
    assert "req/s" in summary
    assert "p50" in summary
    assert "p99" in summary
    assert "25 jobs definite, 0 undetermined" in summary
    assert f"{len(rec.received)}/{len(rec.received)} webhooks" in result.err
    document = orjson.loads((cwd / "var" / "expect.json").read_bytes())
    assert document["summary"] == {"jobs": 25, "definite": 25, "undetermined": 0}
    assert document["seed"] == 5
    assert document["url"] == rec.url


async def test_simulate_reports_deliveries_it_gave_up_and_marks_their_jobs_undetermined(
    tmp_path: Path,
) -> None:
    async def no_failures_taken(body: bytes, nth: int) -> tuple[int, dict[str, object]]:
        if orjson.loads(body)["event"] == "job.failed":
            return 503, {"error": "unavailable"}
        return 200, {"received": True}

    async with receiver(SECRET, no_failures_taken) as rec:
        result = await hooks(
            "simulate", "--jobs", 10, "--failures", 0.5, "--seed", 3, "--backoff", 0.01,
            "--url", rec.url, "--secret", SECRET, "--expect", tmp_path / "e.json", cwd=tmp_path,
        )  # fmt: skip

    assert result.code == 1, result
    document = orjson.loads((tmp_path / "e.json").read_bytes())
    undetermined = {j for j, e in document["jobs"].items() if "undetermined" in e}
    failed_jobs = {
        orjson.loads(r.body)["jobId"]
        for r in rec.received
        if orjson.loads(r.body)["event"] == "job.failed"
    }
    assert undetermined == failed_jobs
    assert undetermined
    assert f"given up    {len(failed_jobs)}" in result.out
    for job in failed_jobs:
        assert f"given up {job} job.failed" in result.out
        assert f"undetermined {job}: job.failed given up after 5 attempts" in result.out
    assert "deliveries given up" in result.err
    clean(result)


async def test_simulate_with_a_wrong_secret_stops_at_once_and_says_so(tmp_path: Path) -> None:
    async with receiver(SECRET) as rec:
        result = await hooks(
            "simulate", "--jobs", 500, "--url", rec.url, "--secret", "wrong",
            "--expect", tmp_path / "e.json", cwd=tmp_path,
        )  # fmt: skip

    assert result.code == 1, result
    assert "refused the signature" in result.err
    assert "secret" in result.err
    assert len(rec.received) < 100
    assert not (tmp_path / "e.json").exists()
    clean(result)


async def test_simulate_against_an_address_nobody_listens_on_exits_1_at_once(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/api/webhooks/wazza"

    result = await hooks("simulate", "--jobs", 10, "--url", url, "--secret", "s", cwd=tmp_path)

    assert result.code == 1, result
    assert f"cannot reach {url}: connection refused" in result.err
    clean(result)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--duplicates", "1.5"], id="duplicates"),
        pytest.param(["--jobs", "0"], id="jobs"),
        pytest.param(["--rate", "-1"], id="rate"),
        pytest.param(["--url", "ftp://x"], id="url"),
    ],
)
async def test_simulate_refuses_bad_options(tmp_path: Path, argv: list[str]) -> None:
    result = await hooks("simulate", "--secret", "s", *argv, cwd=tmp_path)

    assert result.code in (1, 2), result
    assert result.err.strip()
    clean(result)


# --- verify -------------------------------------------------------------------------------------


def records(plans: Sequence[JobPlan], event_type: str) -> list[Record]:
    """Every delivery of these jobs of one event type, as raw-topic records."""
    out = []
    for job in plans:
        for index in job.order:
            event = job.events[index]
            if event.event_type != event_type:
                continue
            envelope = contract.RawEnvelope(
                event.event_type, contract.body_event_id(event.body), int(time.time() * 1000),
                int(time.time()), "application/json", "test", "wazza",
            )  # fmt: skip
            out.append(
                Record("t.raw", 0, len(out), job.job_id.encode(), event.body, envelope.to_headers())
            )
    return out


async def apply(store: Store, plans: Sequence[JobPlan], service: str, event_type: str) -> None:
    """What a consumer service does with these jobs' deliveries, through its own batch code."""

    async def never(record: Record, error: BaseException) -> None:
        raise AssertionError(f"dead-lettered: {error!r}")

    result = await apply_batch(
        store, BUILTIN[service], "t.raw", {0: records(plans, event_type)}, never
    )
    assert {outcome for _, outcome, _ in result.outcomes} <= {"applied", "duplicate", "stale"}


def planned(tmp_path: Path, jobs: int = 30) -> tuple[list[JobPlan], Path]:
    """A plan with duplicates and reordering, and its expect file as simulate writes it when
    every delivery was taken."""
    plans = make_plan(PlanOptions(jobs, 0.2, 0.3, 0.3, 9), time.time())
    path = tmp_path / "expect.json"
    write_expect(path, [expect_job(p, range(len(p.events)), {}) for p in plans], {"seed": 9})
    return plans, path


async def test_verify_passes_when_the_store_holds_every_expected_state(
    tmp_path: Path, store_url: str
) -> None:
    plans, expect = planned(tmp_path)
    url = store_url
    store = await open_store(url)
    try:
        # Terminal events first, progress last: the arrival order must not matter.
        await apply(store, plans, "completion", "job.completed")
        await apply(store, plans, "failure", "job.failed")
        await apply(store, plans, "progress", "job.processing")
    finally:
        await store.close()

    result = await hooks("verify", "--expect", expect, "--database-url", url, cwd=tmp_path)

    assert result.code == 0, result
    assert "verify: 30 jobs, 30 match, 0 differ" in result.out


async def test_verify_prints_every_difference_and_exits_1(tmp_path: Path, store_url: str) -> None:
    plans, expect = planned(tmp_path)
    url = store_url
    store = await open_store(url)
    try:
        await apply(store, plans, "progress", "job.processing")
        await apply(store, plans[:20], "completion", "job.completed")
        await apply(store, plans[:20], "failure", "job.failed")
    finally:
        await store.close()

    result = await hooks(
        "verify", "--expect", expect, cwd=tmp_path, env=subprocess_env(DATABASE_URL=url)
    )

    assert result.code == 1, result
    for job in plans[20:]:
        assert f'{job.job_id}: status: expected "{job.terminal.event_type[4:]}", store has ' in (
            result.out
        )
        assert f"{job.job_id}: finishedAt: expected" in result.out
    assert "verify: 30 jobs, 20 match, 10 differ" in result.out


async def test_verify_wait_keeps_looking_until_the_consumers_catch_up(
    tmp_path: Path, store_url: str
) -> None:
    plans, expect = planned(tmp_path)
    url = store_url
    store = await open_store(url)
    try:
        await apply(store, plans, "progress", "job.processing")
        waiting = asyncio.create_task(
            hooks("verify", "--expect", expect, "--database-url", url, "--wait", 30, cwd=tmp_path)
        )
        await asyncio.sleep(2.0)
        assert not waiting.done()
        await apply(store, plans, "completion", "job.completed")
        await apply(store, plans, "failure", "job.failed")
        result = await waiting
    finally:
        await store.close()

    assert result.code == 0, result
    assert "30 match, 0 differ" in result.out


async def test_verify_reads_a_store_while_a_consumer_holds_its_write_lock(tmp_path: Path) -> None:
    plans, expect = planned(tmp_path)
    url = f"sqlite:///{tmp_path}/wazza.db"
    store = await open_store(url)
    try:
        for service, event_type in SERVICES:
            await apply(store, plans, service, event_type)
    finally:
        await store.close()
    # Another writer (a consumer's long batch) holds the write lock, past SQLite's busy
    # timeout, while verify opens and reads the file: a store already at the current schema
    # is opened without the write lock, and WAL readers do not wait for writers.
    locker = sqlite3.connect(tmp_path / "wazza.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        result = await hooks(
            "verify", "--expect", expect, "--database-url", url, "--wait", 30, cwd=tmp_path
        )
    finally:
        locker.execute("COMMIT")
        locker.close()

    assert result.code == 0, result
    assert "30 match, 0 differ" in result.out


SERVICES = (
    ("completion", "job.completed"),
    ("failure", "job.failed"),
    ("progress", "job.processing"),
)


async def test_verify_without_a_store_exits_1_and_creates_none(tmp_path: Path) -> None:
    _, expect = planned(tmp_path, jobs=2)

    result = await hooks("verify", "--expect", expect, cwd=tmp_path)

    assert result.code == 1, result
    assert "no store at sqlite:///./var/wazza.db" in result.err
    assert not (tmp_path / "var" / "wazza.db").exists()
    clean(result)


async def test_verify_without_an_expect_file_exits_1_saying_what_writes_one(tmp_path: Path) -> None:
    result = await hooks("verify", "--expect", tmp_path / "nope.json", cwd=tmp_path)

    assert result.code == 1, result
    assert "simulate --expect FILE writes it" in result.err
    clean(result)


# --- register -----------------------------------------------------------------------------------


async def test_register_posts_the_spec_request_and_prints_the_webhook_id(tmp_path: Path) -> None:
    async with registration_api("wz_live_key", "wh_8f2c1d") as api:
        result = await hooks(
            "register", "--url", "https://hooks.example.com/api/webhooks/wazza",
            "--events", "completed", "job.failed", "--api-key", "wz_live_key",
            "--api-base", api.base, "--secret", SECRET, cwd=tmp_path,
        )  # fmt: skip

    assert result.code == 0, result
    assert result.out == "wh_8f2c1d\n"
    [(method, path, headers, body)] = api.requests
    assert (method, path) == ("POST", "/v1/webhooks")
    assert headers["Authorization"] == "Bearer wz_live_key"
    assert headers["Content-Type"] == "application/json"
    assert orjson.loads(body) == {
        "url": "https://hooks.example.com/api/webhooks/wazza",
        "events": ["job.completed", "job.failed"],
        "secret": SECRET,
    }
    assert api.problems == []


async def test_register_takes_the_key_and_secret_from_the_environment_and_all_events_by_default(
    tmp_path: Path,
) -> None:
    async with registration_api("wz_env_key", "wh_1") as api:
        result = await hooks(
            "register", "--url", "https://hooks.example.com/w", "--api-base", api.base + "/",
            cwd=tmp_path,
            env=subprocess_env(WAZZA_API_KEY="wz_env_key", WAZZA_WEBHOOK_SECRETS=f"{SECRET},old"),
        )  # fmt: skip

    assert result.code == 0, result
    assert result.out == "wh_1\n"
    assert orjson.loads(api.requests[0][3]) == {
        "url": "https://hooks.example.com/w",
        "events": ["job.completed", "job.failed", "job.processing"],
        "secret": SECRET,
    }


async def test_register_with_a_key_the_api_refuses_exits_1_saying_so(tmp_path: Path) -> None:
    async with registration_api("wz_live_key", "wh_1") as api:
        result = await hooks(
            "register", "--url", "https://hooks.example.com/w", "--api-key", "wz_wrong",
            "--api-base", api.base, "--secret", SECRET, cwd=tmp_path,
        )  # fmt: skip

    assert result.code == 1, result
    assert result.out == ""
    assert "refused the key (HTTP 401)" in result.err
    clean(result)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        pytest.param(["--secret", SECRET], {}, "no API key", id="no-key"),
        pytest.param(["--api-key", "k"], {}, "no secret", id="no-secret"),
        pytest.param(
            ["--api-key", "k", "--secret", "s", "--api-base", "http://127.0.0.1:{port}"],
            {},
            "connection refused",
            id="unreachable",
        ),
    ],
)
async def test_register_refuses_what_it_cannot_do_in_one_line(
    tmp_path: Path, argv: list[str], env: dict[str, str], message: str
) -> None:
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    dev_folder(tmp_path)  # a dev secret is never registered with the real API

    result = await hooks(
        "register", "--url", "https://h.example.com/w", *argv, cwd=tmp_path,
        env=subprocess_env(**env),
    )  # fmt: skip

    assert result.code == 1, result
    assert message in result.err
    clean(result)
