"""`wazza-hooks jobs show|list|history`, run as the real command against a filled store (both
databases): exact JSON, human output, exit codes and the refusals."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumers.batch import Record, apply_batch
from consumers.service import BUILTIN
from consumers.store import Store, Tx
from tests.support.commands import Result, hooks
from tests.support.consumers import body, completed, envelope_of, failed, progress, rows
from tests.support.env import subprocess_env
from wazza_hooks import contract

# Runs the project's commands or external tools as processes.
pytestmark = pytest.mark.slow

OUTPUT_A = {
    "url": "https://cdn.wazza.ai/outputs/job-a.mp4",
    "width": 1920,
    "height": 1080,
    "duration": 10,
    "format": "mp4",
}
METADATA = {"provider": "openai", "model": "sora-2-pro", "creditsUsed": 15}
ERROR = {"code": "CONTENT_POLICY_VIOLATION", "message": "Content violates safety policy"}


def iso(ms: int | None) -> str | None:
    """The expected time format, computed independently of the command's code."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def record(offset: int, raw: bytes) -> Record:
    key = orjson.loads(raw)["jobId"].encode()
    return Record("t.raw", 0, offset, key, raw, envelope_of(raw).to_headers())


def event_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


A_PROGRESS = progress("job-a", 40, "2025-10-22T10:00:00Z")
A_COMPLETED = completed("job-a", "2025-10-22T10:30:00Z")
A_STALE = progress("job-a", 60, "2025-10-22T10:10:00Z")
A_BAD = progress("job-a", 150, "2025-10-22T10:20:00Z")  # percent out of range: dead-lettered
B_FAILED = failed("job-b", "2025-10-22T11:00:00Z")
B_LOSING = completed("job-b", "2025-10-22T10:50:00Z")  # an earlier terminal event: conflict
C_PROGRESS = progress("job-c", 10, "2025-10-22T09:00:00Z")
D_BAD = body("job.processing", "job-d", "2025-10-22T09:00:00Z", progress={"percent": -5})


@dataclass(frozen=True)
class Filled:
    url: str
    env: dict[str, str]
    cwd: Path
    bad_a: Record
    bad_d: Record

    async def run(self, *args: str) -> Result:
        return await hooks(*args, env=self.env, cwd=self.cwd)


async def fill(store: Store) -> tuple[Record, Record]:
    """job-a: progress, completed (+ a duplicate), stale progress, a dead-lettered progress;
    job-b: failed, then an earlier completion (conflict); job-c: progress only; job-d: only a
    dead-lettered event (history, but no row). Updated in the order a, b, c."""
    dead: list[Record] = []

    async def dead_letter(tx: Tx, rec: Record, error: BaseException) -> None:
        dead.append(rec)

    async def apply(service: str, *records: Record) -> list[str]:
        result = await apply_batch(
            store, BUILTIN[service], "t.raw", {0: list(records)}, dead_letter
        )
        # Distinct update times, so that `list` has one right order.
        await asyncio.sleep(0.01)
        return [outcome for _, outcome, _ in result.outcomes]

    bad_a = record(3, A_BAD)
    bad_d = record(5, D_BAD)
    assert await apply("progress", record(0, A_PROGRESS)) == ["applied"]
    assert await apply("completion", record(0, A_COMPLETED), record(1, A_COMPLETED)) == [
        "applied",
        "duplicate",
    ]
    assert await apply("progress", record(1, A_STALE)) == ["stale"]
    assert await apply("failure", record(0, B_FAILED)) == ["applied"]
    assert await apply("completion", record(2, B_LOSING)) == ["conflict"]
    assert await apply("progress", record(2, C_PROGRESS), bad_a) == ["applied", "dead_lettered"]
    assert await apply("progress", record(4, A_BAD), bad_d) == ["duplicate", "dead_lettered"]
    assert dead == [bad_a, bad_d]
    return bad_a, bad_d


@pytest.fixture
async def filled(store: Store, store_url: str, tmp_path: Path) -> Filled:
    bad_a, bad_d = await fill(store)
    return Filled(store_url, subprocess_env(DATABASE_URL=store_url), tmp_path, bad_a, bad_d)


async def times(store: Store, job_id: str) -> tuple[str | None, str | None]:
    ((created, updated),) = await rows(
        store, "SELECT created_ms, updated_ms FROM jobs WHERE job_id = ?", job_id
    )
    return iso(created), iso(updated)


async def applied_at(store: Store, service: str, raw: bytes) -> str | None:
    ((ms,),) = await rows(
        store,
        "SELECT applied_ms FROM job_events WHERE service = ? AND event_id = ?",
        service,
        event_id(raw),
    )
    return iso(ms)


def received_at(rec: Record) -> str | None:
    return iso(contract.RawEnvelope.from_headers(rec.headers).received_at_ms)


async def expected_jobs(store: Store) -> dict[str, dict[str, Any]]:
    created_a, updated_a = await times(store, "job-a")
    created_b, updated_b = await times(store, "job-b")
    created_c, updated_c = await times(store, "job-c")
    return {
        "job-a": {
            "jobId": "job-a",
            "status": "completed",
            "percent": 100,
            "stage": "completed",
            "estimatedTimeRemaining": 0,
            "output": OUTPUT_A,
            "error": None,
            "metadata": METADATA,
            "lastProgressAt": None,
            "finishedAt": "2025-10-22T10:30:00.000Z",
            "createdAt": created_a,
            "updatedAt": updated_a,
        },
        "job-b": {
            "jobId": "job-b",
            "status": "failed",
            "percent": None,
            "stage": "failed",
            "estimatedTimeRemaining": None,
            "output": None,
            "error": ERROR,
            "metadata": None,
            "lastProgressAt": None,
            "finishedAt": "2025-10-22T11:00:00.000Z",
            "createdAt": created_b,
            "updatedAt": updated_b,
        },
        "job-c": {
            "jobId": "job-c",
            "status": "processing",
            "percent": 10,
            "stage": "rendering",
            "estimatedTimeRemaining": 90,
            "output": None,
            "error": None,
            "metadata": None,
            "lastProgressAt": "2025-10-22T09:00:00.000Z",
            "finishedAt": None,
            "createdAt": created_c,
            "updatedAt": updated_c,
        },
    }


# --- show ----------------------------------------------------------------------------------------


async def test_show_json_is_the_documented_object(filled: Filled, store: Store) -> None:
    expected = await expected_jobs(store)
    for job_id in ("job-a", "job-b", "job-c"):
        result = await filled.run("jobs", "show", job_id, "--json")
        assert (result.code, result.err) == (0, "")
        document = result.json()
        assert document == expected[job_id]
        assert list(document) == list(expected[job_id])  # the documented key order


async def test_show_prints_a_key_value_block(filled: Filled, store: Store) -> None:
    _, updated = await times(store, "job-a")

    result = await filled.run("jobs", "show", "job-a")

    assert (result.code, result.err) == (0, "")
    lines = result.out.splitlines()
    assert lines[0].split() == ["job", "job-a"]
    assert lines[1].split() == ["status", "completed"]
    assert "finished       2025-10-22T10:30:00.000Z" in lines
    assert f"updated        {updated}" in lines
    assert "Traceback" not in result.out


async def test_the_database_url_flag_overrides_the_environment(
    filled: Filled, tmp_path: Path
) -> None:
    env = subprocess_env(DATABASE_URL=f"sqlite:///{tmp_path}/elsewhere.db")

    result = await hooks(
        "jobs", "show", "job-b", "--database-url", filled.url, env=env, cwd=tmp_path
    )

    assert result.code == 0
    assert result.out.splitlines()[1].split() == ["status", "failed"]
    assert not (tmp_path / "elsewhere.db").exists()


async def test_an_unknown_job_exits_1(filled: Filled) -> None:
    for action in ("show", "history"):
        human = await filled.run("jobs", action, "job-zz")
        assert (human.code, human.out) == (1, "")
        assert "no job job-zz" in human.err

        as_json = await filled.run("jobs", action, "job-zz", "--json")
        assert as_json.code == 1
        assert as_json.json() == {"error": "not_found", "jobId": "job-zz"}
        assert "no job job-zz" in as_json.err


# --- history -------------------------------------------------------------------------------------


async def test_history_lists_each_distinct_event_once_with_its_outcome(
    filled: Filled, store: Store
) -> None:
    result = await filled.run("jobs", "history", "job-a", "--json")

    assert (result.code, result.err) == (0, "")
    assert result.json() == {
        "jobId": "job-a",
        "events": [
            {
                "service": "progress",
                "eventId": event_id(A_PROGRESS),
                "eventType": "job.processing",
                "eventTime": "2025-10-22T10:00:00.000Z",
                "appliedAt": await applied_at(store, "progress", A_PROGRESS),
                "outcome": "applied",
            },
            {
                "service": "progress",
                "eventId": event_id(A_STALE),
                "eventType": "job.processing",
                "eventTime": "2025-10-22T10:10:00.000Z",
                "appliedAt": await applied_at(store, "progress", A_STALE),
                "outcome": "stale",
            },
            {
                "service": "completion",
                "eventId": event_id(A_COMPLETED),  # delivered twice, taken once
                "eventType": "job.completed",
                "eventTime": "2025-10-22T10:30:00.000Z",
                "appliedAt": await applied_at(store, "completion", A_COMPLETED),
                "outcome": "applied",
            },
            {
                # Unparsable, so its time is when the ingester received it (now: the last).
                "service": "progress",
                "eventId": event_id(A_BAD),
                "eventType": "job.processing",
                "eventTime": received_at(filled.bad_a),
                "appliedAt": await applied_at(store, "progress", A_BAD),
                "outcome": "dead_lettered",
            },
        ],
    }


async def test_history_shows_a_conflict_in_event_time_order(filled: Filled, store: Store) -> None:
    result = await filled.run("jobs", "history", "job-b", "--json")

    assert result.code == 0
    events = result.json()["events"]
    assert [(e["service"], e["eventId"], e["eventTime"], e["outcome"]) for e in events] == [
        ("completion", event_id(B_LOSING), "2025-10-22T10:50:00.000Z", "conflict"),
        ("failure", event_id(B_FAILED), "2025-10-22T11:00:00.000Z", "applied"),
    ]


async def test_history_of_a_job_known_only_by_a_dead_letter(filled: Filled) -> None:
    history = await filled.run("jobs", "history", "job-d", "--json")
    show = await filled.run("jobs", "show", "job-d", "--json")

    assert history.code == 0
    assert [(e["eventId"], e["outcome"]) for e in history.json()["events"]] == [
        (event_id(D_BAD), "dead_lettered")
    ]
    assert show.code == 1


async def test_history_prints_an_aligned_table(filled: Filled) -> None:
    result = await filled.run("jobs", "history", "job-a")

    assert (result.code, result.err) == (0, "")
    header, *lines = result.out.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "EVENT TIME",
        "APPLIED",
        "SERVICE",
        "EVENT TYPE",
        "OUTCOME",
        "EVENT ID",
    ]
    assert [line.split()[-2:] for line in lines] == [
        ["applied", event_id(A_PROGRESS)],
        ["stale", event_id(A_STALE)],
        ["applied", event_id(A_COMPLETED)],
        ["dead_lettered", event_id(A_BAD)],
    ]
    assert lines[0].startswith("2025-10-22T10:00:00.000Z  ")
    assert len({line.index("job.") for line in lines}) == 1  # aligned columns


# --- list ----------------------------------------------------------------------------------------


async def test_list_json_is_most_recently_updated_first(filled: Filled, store: Store) -> None:
    expected = await expected_jobs(store)

    result = await filled.run("jobs", "list", "--json")

    assert (result.code, result.err) == (0, "")
    assert result.json() == {"jobs": [expected["job-c"], expected["job-b"], expected["job-a"]]}


async def test_list_filters_by_status_and_is_bounded_by_limit(filled: Filled) -> None:
    async def listed(*args: str) -> list[str]:
        result = await filled.run("jobs", "list", "--json", *args)
        assert result.code == 0, result.err
        return [job["jobId"] for job in result.json()["jobs"]]

    assert await listed("--status", "failed") == ["job-b"]
    assert await listed("--status", "completed") == ["job-a"]
    assert await listed("--status", "processing") == ["job-c"]
    assert await listed("--limit", "2") == ["job-c", "job-b"]
    assert await listed("--limit", "1", "--status", "completed") == ["job-a"]


async def test_list_prints_a_table(filled: Filled) -> None:
    result = await filled.run("jobs", "list", "--status", "completed")

    assert (result.code, result.err) == (0, "")
    header, *lines = result.out.splitlines()
    assert header.split() == ["JOB", "STATUS", "PERCENT", "STAGE", "UPDATED"]
    assert [line.split()[:4] for line in lines] == [["job-a", "completed", "100", "completed"]]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--limit", "0"), "between 1 and 10000"),
        (("--limit", "10001"), "between 1 and 10000"),
        (("--limit", "many"), "not a whole number"),
        (("--status", "done"), "invalid choice"),
    ],
)
async def test_list_refuses_bad_arguments(
    args: tuple[str, ...], complaint: str, tmp_path: Path
) -> None:
    result = await hooks("jobs", "list", *args, env=subprocess_env(), cwd=tmp_path)

    assert result.code == 2
    assert complaint in result.err


# --- unusable stores -----------------------------------------------------------------------------


async def test_a_missing_sqlite_file_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "wazza.db"
    url = f"sqlite:///{path}"

    for argv in (("jobs", "list"), ("jobs", "show", "job-a", "--json"), ("jobs", "history", "x")):
        result = await hooks(*argv, env=subprocess_env(DATABASE_URL=url), cwd=tmp_path)
        assert (result.code, result.out) == (1, "")
        assert url in result.err
        assert "does not exist" in result.err
        assert "Traceback" not in result.err
    assert not path.parent.exists()


async def test_the_default_store_is_var_wazza_db_and_is_not_created(tmp_path: Path) -> None:
    result = await hooks("jobs", "list", env=subprocess_env(), cwd=tmp_path)

    assert result.code == 1
    assert "sqlite:///./var/wazza.db" in result.err
    assert not (tmp_path / "var").exists()


async def test_an_unreachable_postgresql_exits_1_naming_the_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens once it is closed
    url = f"postgresql://wazza:s3cret@127.0.0.1:{port}/wazza"

    result = await hooks(
        "jobs", "show", "job-a", "--database-url", url, env=subprocess_env(), cwd=tmp_path
    )

    assert (result.code, result.out) == (1, "")
    assert f"postgresql://wazza:***@127.0.0.1:{port}/wazza" in result.err
    assert "s3cret" not in result.err
    assert "Traceback" not in result.err
