"""`wazza-hooks tail`, run as a process while a real ingester takes webhooks and the three
built-in services apply them from the real broker into both stores: each delivery is a line
as it arrives, followed by each service's outcome read from the store (applied, a duplicate
of an earlier copy, skipped by the services that do not take its type); a quarantined
delivery shows its reason; the filters keep only what they name; Ctrl-C exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from consumers import JobEvent, Service, Tx
from consumers.service import BUILTIN
from consumers.settings import ConsumerSettings
from consumers.store import Store, open_store
from tests.support.commands import COMMAND_SECONDS, hooks
from tests.support.consumers import SETTLE_SECONDS, offsets_reach, running, settings_on, until
from tests.support.env import ROOT
from tests.support.ingesters import deliver, serving, warm_up
from tests.support.kafka import Topics
from tests.support.ops import env_for, one_line_refusal
from tests.support.signing import completed_body, processing_body
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker, free_port


class Tail:
    """A running `wazza-hooks tail` and the lines it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def until(self, enough: Callable[[list[str]], bool], what: str) -> list[str]:
        """Read lines until `enough(lines)`; fail with `what` after SETTLE_SECONDS."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(SETTLE_SECONDS):
            while not enough(self.lines):
                line = await self.proc.stdout.readline()
                assert line, f"tail ended before {what}: {self.lines}"
                self.lines.append(line.decode())
        return self.lines

    def json(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.lines]

    async def interrupt(self) -> tuple[int, str, str]:
        """Ctrl-C; (exit code, the rest of stdout, stderr)."""
        self.proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(self.proc.communicate(), COMMAND_SECONDS)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def tailing(env: dict[str, str], *args: str) -> AsyncIterator[Tail]:
    """`wazza-hooks tail ARGS`, once it follows the topics (its stderr says so)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wazza_tools.cli",
        "tail",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        started = await asyncio.wait_for(proc.stderr.readline(), COMMAND_SECONDS)
        assert started.startswith(b"wazza-hooks: following "), started
        yield Tail(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def tail_env(settings: ConsumerSettings, store_url: str, topics: Topics) -> dict[str, str]:
    return {**env_for(settings, store_url), "WAZZA_QUARANTINE_TOPIC": topics.quarantine}


async def warmed_up(store: Store, url: str) -> None:
    """Events through, so that the topics have leaders and the store knows the three services
    (their offsets)."""
    await warm_up(url)
    for service in BUILTIN:
        await until(lambda s=service: offsets_reach(store, s, 1), f"{service} took the warm-up")  # type: ignore[misc]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


async def test_tail_shows_each_delivery_then_what_each_service_did_with_it(
    broker: LocalBroker, topics: Topics, store: Store, store_url: str
) -> None:
    settings = settings_on(broker, topics)
    progress, done = processing_body("job_t", 40), completed_body("job_t")
    async with (
        serving(broker.bootstrap_servers, topics) as url,
        running(store, settings, *BUILTIN.values()),
    ):
        await warmed_up(store, url)
        env = tail_env(settings, store_url, topics)
        async with tailing(env, "--json", "--wait", "60") as tail:
            assert (await deliver(url, progress))[0] == 200
            # Its outcome first: a completion applied before it would make it stale.
            await tail.until(lambda lines: len(lines) >= 2, "the progress and its outcome")
            for body in (done, done):  # the sender's retry: a duplicate
                assert (await deliver(url, body))[0] == 200
            assert (await deliver(url, processing_body("job_t", 150)))[0] == 202
            await tail.until(lambda lines: len(lines) >= 7, "four deliveries and three outcomes")
            code, rest, err = await tail.interrupt()

    assert code == 0, (rest, err)
    assert rest == ""
    assert "Traceback" not in err
    docs = tail.json()
    deliveries = kinds(docs, "delivery")
    assert [(d["eventType"], d["outcome"], d["reason"]) for d in deliveries] == [
        ("job.processing", "accepted", None),
        ("job.completed", "accepted", None),
        ("job.completed", "accepted", None),
        ("job.processing", "quarantined", "invalid_progress"),
    ]
    assert {d["jobId"] for d in deliveries} == {"job_t"}
    first_done, second_done = deliveries[1]["id"], deliveries[2]["id"]
    outcomes = {o["id"]: o for o in kinds(docs, "outcome")}
    assert set(outcomes) == {deliveries[0]["id"], first_done, second_done}

    def taken(record: str) -> dict[str, tuple[str, str | None]]:
        assert outcomes[record]["pending"] == []
        assert outcomes[record]["timedOut"] is False
        return {s["service"]: (s["outcome"], s["record"]) for s in outcomes[record]["services"]}

    assert taken(deliveries[0]["id"]) == {
        "progress": ("applied", deliveries[0]["id"]),
        "completion": ("skipped", None),
        "failure": ("skipped", None),
    }
    assert taken(first_done) == {
        "completion": ("applied", first_done),
        "progress": ("skipped", None),
        "failure": ("skipped", None),
    }
    # The copy: the completion service had taken the event from the first one.
    assert taken(second_done)["completion"] == ("duplicate", first_done)
    applied = next(s for s in outcomes[first_done]["services"] if s["service"] == "completion")
    assert applied["appliedAt"] >= deliveries[1]["receivedAt"]


async def test_the_filters_keep_what_they_name_and_the_text_lines_read_well(
    broker: LocalBroker, topics: Topics, store: Store, store_url: str
) -> None:
    settings = settings_on(broker, topics)
    async with (
        serving(broker.bootstrap_servers, topics) as url,
        running(store, settings, *BUILTIN.values()),
    ):
        await warmed_up(store, url)
        env = tail_env(settings, store_url, topics)
        async with (
            tailing(env, "--job", "job_f", "--type", "completed", "--wait", "60") as by_job,
            tailing(env, "--service", "progress", "--json", "--wait", "60") as by_service,
        ):
            for body in (completed_body("job_g"), processing_body("job_f", 10)):
                await deliver(url, body)
            # Its outcome first: a completion applied before it would make it stale.
            await by_service.until(lambda lines: len(lines) >= 2, "the progress event")
            for body in (
                completed_body("job_f"),
                processing_body("job_g", 150),  # quarantined: no service takes it
            ):
                await deliver(url, body)
            await by_job.until(lambda lines: len(lines) >= 2, "job_f's completion and outcome")
            for service in BUILTIN:
                await until(lambda s=service: offsets_reach(store, s, 4), f"{service} done")  # type: ignore[misc]
            await asyncio.sleep(2)  # a few polls: a line the filters let through would be out
            job_code, job_rest, _ = await by_job.interrupt()
            service_code, service_rest, _ = await by_service.interrupt()

    assert (job_code, service_code) == (0, 0)
    first, second = by_job.lines + job_rest.splitlines(keepends=True)
    assert first.split()[1:3] == ["job.completed", "job_f"]
    assert first.split()[3] == "accepted"
    assert first.split()[-1].startswith(f"{topics.raw}:")
    assert second.startswith("    -> job_f job.completed: completion applied (+")
    assert second.rstrip().endswith(" ms)")
    docs = [orjson.loads(line) for line in by_service.lines + service_rest.splitlines()]
    assert [(d["kind"], d["eventType"], d["jobId"]) for d in docs] == [
        ("delivery", "job.processing", "job_f"),
        ("outcome", "job.processing", "job_f"),
    ]
    assert [(s["service"], s["outcome"]) for s in docs[1]["services"]] == [("progress", "applied")]


async def test_an_unknown_service_or_an_unreachable_broker_is_one_line(
    broker: LocalBroker, topics: Topics, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/wazza.db"
    created = await open_store(url)  # a store no service has used yet
    await created.close()
    settings = settings_on(broker, topics)
    env = tail_env(settings, url, topics)

    unknown = one_line_refusal(await hooks("tail", "--service", "nosuch", env=env))
    assert unknown == (
        f"wazza-hooks: unknown service 'nosuch': the store holds no offsets for it on "
        f"{topics.raw} (services it knows: none yet)"
    )
    down = f"127.0.0.1:{free_port()}"
    unreachable = one_line_refusal(await hooks("tail", "--bootstrap-servers", down, env=env))
    assert unreachable.startswith(f"wazza-hooks: cannot reach the broker at {down}")


def failing_service() -> Service:
    """A user's service whose handler fails on job_poison: its event is dead-lettered."""

    async def handle(event: JobEvent, tx: Tx) -> str | None:
        if event.job_id == "job_poison":
            raise RuntimeError("cannot handle this one")
        return None

    return Service("picky", [contract.JOB_COMPLETED], handle)


async def test_with_dlq_a_dead_letter_shows_who_gave_it_up_and_why(
    broker: LocalBroker, topics: Topics, store: Store, store_url: str
) -> None:
    settings = settings_on(broker, topics)
    async with (
        serving(broker.bootstrap_servers, topics) as url,
        running(store, settings, failing_service(), BUILTIN["completion"]),
    ):
        await warm_up(url)
        for service in ("picky", "completion"):
            await until(lambda s=service: offsets_reach(store, s, 1), f"{service} warmed up")  # type: ignore[misc]
        env = tail_env(settings, store_url, topics)
        async with tailing(env, "--dlq", "--service", "picky", "--wait", "60") as tail:
            assert (await deliver(url, completed_body("job_poison")))[0] == 200
            await tail.until(lambda lines: len(lines) >= 3, "the delivery, outcome, dead letter")
            code, rest, _ = await tail.interrupt()

    assert code == 0
    lines = tail.lines + rest.splitlines(keepends=True)
    raw = next(line for line in lines if f" {topics.raw}:" in line)
    dead = next(line for line in lines if f" {topics.dlq}:" in line)
    outcome = next(line for line in lines if line.startswith("    -> "))
    assert raw.split()[1:4] == ["job.completed", "job_poison", "accepted"]
    assert dead.split()[1:3] == ["job.completed", "job_poison"]
    assert "  dead-lettered by picky: RuntimeError: cannot handle this one  " in dead
    assert outcome.startswith("    -> job_poison job.completed: picky dead_lettered (+")
