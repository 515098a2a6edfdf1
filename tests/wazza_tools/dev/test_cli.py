"""`wazza-hooks` as a developer or an operator types it: real processes, ports and brokers.

Every process a test starts is killed, with its descendants, when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pty
import re
import signal
import sqlite3
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.support.consumers import progress, publish
from tests.support.env import BIN, subprocess_env
from tests.support.kafka import read_topic, unique
from tests.support.processes import alive, running
from tests.support.signing import completed_body, sign_wazza
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker, free_port, port_in_use

pytestmark = pytest.mark.slow

# Each command starts in well under a second; a loaded CI machine gets ample room.
START_SECONDS = 20.0
# A command that refuses to run does so right after its imports.
REFUSAL_SECONDS = 20.0
DEFAULT_TOPICS = (contract.RAW_TOPIC, contract.QUARANTINE_TOPIC, contract.DLQ_TOPIC)


# --- processes --------------------------------------------------------------------------------


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def tansu_on(port: int) -> set[int]:
    """The live processes started with `--listener-url tcp://127.0.0.1:<port>`."""
    wanted = ["--listener-url", f"tcp://127.0.0.1:{port}"]
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = cmdline(int(entry.name))
            if any([a, b] == wanted for a, b in itertools.pairwise(args)) and alive(
                int(entry.name)
            ):
                found.add(int(entry.name))
    return found


def hooks(*args: str | int | Path) -> list[str]:
    return [str(BIN / "wazza-hooks"), *map(str, args)]


def shell(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A command line as printed for a person, run by bash in `cwd` with `env`."""
    return subprocess.run(
        ["bash", "-c", line],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=REFUSAL_SECONDS,
    )


def run(argv: list[str], timeout: float = REFUSAL_SECONDS) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (killed past `timeout`)."""
    return subprocess.run(
        argv, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def two_free_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def partition_counts(bootstrap: str, names: tuple[str, ...]) -> dict[str, int]:
    """Each topic's partition count as the broker describes it (-1: it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics(list(names))
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) if d["error_code"] == 0 else -1 for d in described}


# --- wazza-hooks broker -----------------------------------------------------------------------


async def test_broker_serves_the_three_topics_and_takes_tansu_along_on_ctrl_c() -> None:
    port = free_port()
    with running(hooks("broker", "--engine", "tansu", "--port", port, "--partitions", 5)) as broker:
        await broker.wait_for_stdout("Ctrl-C", START_SECONDS)
        tansu = tansu_on(port)
        assert len(tansu) == 1, f"expected one Tansu on port {port}, found {tansu}"
        assert tansu <= broker.descendants()

        counts = await partition_counts(f"127.0.0.1:{port}", DEFAULT_TOPICS)
        assert counts == dict.fromkeys(DEFAULT_TOPICS, 5)

        # The banner's line says how services use it; an ingester set up that way is served.
        usage = next(line for line in broker.stdout.splitlines() if "services use it with:" in line)
        settings = dict(
            word.split("=", 1) for word in usage.split(":", 1)[1].split() if "=" in word
        )
        assert settings == {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
        }
        ingest_port = free_port()
        body = completed_body(f"job_{uuid.uuid4().hex[:12]}")
        with running(
            [str(BIN / "wazza-ingest"), "--port", str(ingest_port)],
            subprocess_env(WAZZA_WEBHOOK_SECRETS="s3cret-s3cret-s3cret-s3cret", **settings),
        ) as ingester:
            url = f"http://127.0.0.1:{ingest_port}/api/webhooks/wazza"
            await wait_until(lambda: port_in_use("127.0.0.1", ingest_port), START_SECONDS, "it")
            async with aiohttp.ClientSession() as http:
                for _ in range(100):  # until it has connected to the broker
                    headers = sign_wazza("s3cret-s3cret-s3cret-s3cret", body, int(time.time()))
                    async with http.post(url, data=body, headers=headers) as resp:
                        if resp.status == 200:
                            break
                    await asyncio.sleep(0.1)
                assert resp.status == 200, ingester.output()

        os.killpg(broker.pid, signal.SIGINT)  # Ctrl-C in its terminal
        assert await broker.wait_exit(15) == 0, broker.output()
    left = {pid for pid in tansu if alive(pid)}
    assert not left, f"Tansu still running after the command exited: {left}"
    assert not port_in_use("127.0.0.1", port)


def test_a_second_broker_on_a_busy_port_refuses_and_says_the_port_is_in_use(
    broker: LocalBroker,
) -> None:
    result = run(hooks("broker", "--port", broker.port))

    assert result.returncode != 0, result
    assert f"port {broker.port}" in result.stderr
    assert "in use" in result.stderr
    assert "Traceback" not in result.stderr


# --- wazza-hooks topics ensure ----------------------------------------------------------------


def test_topics_ensure_creates_the_topics_once_then_reports_them_as_existing(
    broker: LocalBroker,
) -> None:
    raw, quarantine, dlq = unique("cli.raw"), unique("cli.quarantine"), unique("cli.dlq")
    argv = hooks(
        "topics", "ensure", "--bootstrap-servers", broker.bootstrap_servers,
        "--raw-topic", raw, "--quarantine-topic", quarantine, "--dlq-topic", dlq,
        "--partitions", 4,
    )  # fmt: skip

    first = run(argv)
    second = run(argv)

    assert first.returncode == 0, first
    assert first.stdout.splitlines() == [
        f"{t}: created, 4 partitions" for t in (raw, quarantine, dlq)
    ]
    assert second.returncode == 0, second
    assert second.stdout.splitlines() == [
        f"{t}: exists, 4 partitions" for t in (raw, quarantine, dlq)
    ]


def test_topics_ensure_against_an_address_nobody_listens_on_exits_1_naming_it() -> None:
    port = free_port()
    started = time.monotonic()

    result = run(hooks("topics", "ensure", "--bootstrap-servers", f"127.0.0.1:{port}"), timeout=30)

    assert result.returncode == 1, result
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert time.monotonic() - started < 30


# --- wazza-hooks dev --------------------------------------------------------------------------


async def test_dev_runs_a_stack_that_takes_a_signed_webhook_and_stops_whole_on_ctrl_c(
    tmp_path: Path,
) -> None:
    port, broker_port = two_free_ports()
    var = tmp_path / "var"  # the default ./var of the folder it runs in, as make run's
    url = f"http://127.0.0.1:{port}/api/webhooks/wazza"
    dev_argv = hooks(
        "dev", "--engine", "tansu", "--port", port, "--broker-port", broker_port,
        "--metrics-port", 0,
    )  # fmt: skip
    # A shell with another secret and store exported: the stack keeps its own, and the commands
    # its banner prints must still reach them.
    shell_env = subprocess_env(
        WAZZA_WEBHOOK_SECRETS="someone-elses-secret", DATABASE_URL=f"sqlite:///{tmp_path}/other.db"
    )
    with running(dev_argv, env=shell_env, cwd=tmp_path) as dev:
        await dev.wait_for_stdout(url, START_SECONDS)
        secret_file = var / "dev-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) >= 32

        job = f"job_{uuid.uuid4().hex[:16]}"
        body = completed_body(job)
        connector = aiohttp.TCPConnector(force_close=True)
        two_s = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + START_SECONDS
            ready = False
            while not ready and time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(
                        f"http://127.0.0.1:{port}/readyz", timeout=two_s
                    ) as resp:
                        ready = resp.status == 200
                await asyncio.sleep(0.05)
            assert ready, f"the dev ingester never became ready\n{dev.output()}"
            headers = sign_wazza(secret, body, int(time.time()))
            async with session.post(url, data=body, headers=headers, timeout=two_s) as resp:
                assert resp.status == 200, await resp.text()
        records = await read_topic(f"127.0.0.1:{broker_port}", contract.RAW_TOPIC, expect=1)
        assert [r.value for r in records] == [body]

        # The commands the banner prints, pasted as a person would, in the same folder.
        said = dev.stdout.splitlines()
        send = next(line.strip() for line in said if " send-test " in line)
        show = next(line.strip() for line in said if " jobs show " in line)
        sent = shell(send, tmp_path, shell_env)
        assert sent.returncode == 0, sent
        assert "HTTP 200" in sent.stdout, sent

        def shown_completed() -> bool:
            shown = shell(f"{show} --json", tmp_path, shell_env)
            return shown.returncode == 0 and json.loads(shown.stdout)["status"] == "completed"

        await wait_until(
            shown_completed,
            START_SECONDS,
            "the banner's test event applied and shown by the banner's jobs command",
        )
        # The terminal shows the delivery as `tail` does, then the service that applied it;
        # the services' JSON log lines went to their files, not to the terminal.
        await wait_until(
            lambda: "job.completed: completion applied" in dev.stdout,
            START_SECONDS,
            "the delivery and its outcome in the dev terminal",
        )
        assert re.search(r"job\.completed +job_abc123 +accepted", dev.stdout), dev.output()
        logged = (tmp_path / "var" / "logs" / "completion.log").read_text().splitlines()
        assert any("joined group" in json.loads(line)["msg"] for line in logged), logged
        assert '"level":"info"' not in dev.stdout, dev.output()

        stack = dev.descendants()
        assert len(stack) >= 2, f"expected the broker and the ingester, found {stack}"

        second = run(
            hooks("dev", "--port", port, "--broker-port", broker_port, "--var", tmp_path / "b")
        )
        assert second.returncode == 1, second
        assert "probably running" in second.stderr

        # Ctrl-C in a terminal: SIGINT to its whole process group at once.
        os.killpg(dev.pid, signal.SIGINT)
        assert await dev.wait_exit(30) == 0, dev.output()
        # Every part stopped in order (the broker last): no crash report on the way out.
        assert "Traceback" not in dev.output(), dev.output()
        assert "Unclosed" not in dev.output(), dev.output()
    await wait_until(
        lambda: not port_in_use("127.0.0.1", port) and not port_in_use("127.0.0.1", broker_port),
        2,
        "the ports to be free",
    )
    left = {pid for pid in stack if alive(pid)}
    assert not left, f"processes of the stack still running: {left}"


def backlog_applied(store: Path) -> int:
    """The backlog's events in the progress service's history (0 before the store exists)."""
    if not store.exists():
        return 0
    with contextlib.closing(sqlite3.connect(store)) as conn:
        [(count,)] = conn.execute(
            "SELECT COUNT(*) FROM job_events WHERE service = 'progress' "
            "AND job_id LIKE 'job_backlog_%'"
        ).fetchall()
    return int(count)


async def dev_ready(dev: Any, port: int) -> None:
    """Until the stack's ingester answers /readyz with 200 (it is up, its broker too)."""
    url = f"http://127.0.0.1:{port}/api/webhooks/wazza"
    await dev.wait_for_stdout(url, START_SECONDS * 3)
    deadline = time.monotonic() + START_SECONDS * 3
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    pytest.fail(f"the dev ingester never became ready\n{dev.output()}")


async def test_dev_on_the_memory_only_broker_drains_on_ctrl_c_and_applies_every_job_after_a_restart(
    tmp_path: Path,
) -> None:
    """The scenario of a new user: `dev` with the memory-only broker, 200 jobs, Ctrl-C right after
    them (the stack waits until the consumers applied every acknowledged record), `dev` again in
    the same folder (the store kept, the broker empty), 50 more jobs: every job of both runs is
    in the store as the order rules make it, and the consumers said they took the new log from
    its start."""
    port, broker_port = two_free_ports()
    url = f"http://127.0.0.1:{port}/api/webhooks/wazza"
    dev_argv = hooks(
        "dev", "--engine", "tansu", "--port", port, "--broker-port", broker_port,
        "--metrics-port", 0,
    )  # fmt: skip
    env = subprocess_env()

    def sender(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            hooks(*args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )

    with running(dev_argv, env=env, cwd=tmp_path) as dev:
        await dev_ready(dev, port)
        assert "memory only" in dev.stdout, dev.stdout
        sent = sender("simulate", "--jobs", "200", "--url", url, "--expect", "e1.json")
        assert sent.returncode == 0, f"{sent}\n{dev.output()}"
        # A backlog the consumers cannot have applied yet when Ctrl-C comes: records written to
        # the raw topic as the ingester writes them (acknowledged by the broker).
        backlog = [progress(f"job_backlog_{i}", 50, "2025-10-22T10:00:00Z") for i in range(20_000)]
        await publish(f"127.0.0.1:{broker_port}", contract.RAW_TOPIC, backlog)
        store = tmp_path / "var" / "wazza.db"
        assert backlog_applied(store) < len(backlog), "no backlog left at Ctrl-C"
        os.killpg(dev.pid, signal.SIGINT)
        assert await dev.wait_exit(150) == 0, dev.output()
        assert "not applied" not in dev.stdout, dev.output()
        assert "every acknowledged record applied" in dev.stdout, dev.output()
    assert backlog_applied(store) == len(backlog)
    first = sender("verify", "--expect", "e1.json")
    assert first.returncode == 0, f"applied before the stack stopped?\n{first}"

    with running(dev_argv, env=env, cwd=tmp_path) as dev:
        await dev_ready(dev, port)
        sent = sender("simulate", "--jobs", "50", "--url", url, "--expect", "e2.json")
        assert sent.returncode == 0, f"{sent}\n{dev.output()}"
        second = sender("verify", "--expect", "e2.json", "--wait", "60")
        assert second.returncode == 0, f"{second}\n{dev.output()}"
        assert "50 jobs, 50 match" in second.stdout, second.stdout
        assert "belong to another log" in dev.stdout, dev.output()
        os.killpg(dev.pid, signal.SIGINT)
        assert await dev.wait_exit(150) == 0, dev.output()
        assert "Traceback" not in dev.output(), dev.output()
    again = sender("verify", "--expect", "e1.json")
    assert again.returncode == 0, again


async def test_dev_stops_whole_when_its_terminal_closes(tmp_path: Path) -> None:
    """SIGHUP (the terminal closed) stops the stack as Ctrl-C does: nothing is left running on
    its ports, where the next `make run` would find them busy."""
    port, broker_port = two_free_ports()
    dev_argv = hooks(
        "dev", "--engine", "tansu", "--port", port, "--broker-port", broker_port,
        "--metrics-port", 0,
    )  # fmt: skip
    with running(dev_argv, env=subprocess_env(), cwd=tmp_path) as dev:
        await dev_ready(dev, port)
        stack = dev.descendants()
        assert len(stack) >= 5, f"expected the broker, the ingester and three consumers: {stack}"
        os.kill(dev.pid, signal.SIGHUP)
        assert await dev.wait_exit(60) == 0, dev.output()
        assert "Traceback" not in dev.output(), dev.output()
    ports = (port, broker_port)
    await wait_until(
        lambda: not any(port_in_use("127.0.0.1", p) for p in ports), 5, "the ports to be free"
    )
    left = {pid for pid in stack if alive(pid)}
    assert not left, f"processes of the stack still running: {left}"


# --- dev --reset and the banner -----------------------------------------------------------------


def leftovers(var: Path) -> None:
    """A state folder as a previous run leaves it: a broker log, a store, an expect file."""
    (var / "kafka" / "data").mkdir(parents=True)
    (var / "kafka" / "data" / "meta.properties").write_text("cluster.id=old\n")
    (var / "wazza.db").write_bytes(b"an old store")
    (var / "expect.json").write_text("{}")
    (var / "dev-secret").write_text("a" * 64 + "\n")


async def test_dev_reset_clears_the_state_and_the_banner_waits_until_everything_is_ready(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    leftovers(var)
    port, broker_port = two_free_ports()
    dev_argv = hooks(
        "dev", "--reset", "--yes", "--engine", "tansu", "--port", port,
        "--broker-port", broker_port, "--metrics-port", 0,
    )  # fmt: skip
    with running(dev_argv, env=subprocess_env(), cwd=tmp_path) as dev:
        await dev.wait_for_stdout("wazza-hooks is running locally", START_SECONDS * 3)
        banner_seen = time.time()
        # Printed only once the ingester answers /readyz and every consumer joined its group
        # (said in its log file, before the banner).
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as resp,
        ):
            assert resp.status == 200
        before_banner = dev.stdout.split("wazza-hooks is running locally")[0]
        for service in ("completion", "failure", "progress"):
            lines = (var / "logs" / f"{service}.log").read_text().splitlines()
            logged = [json.loads(line) for line in lines]
            joined = [e["ts"] for e in logged if f"{service}: joined group" in e["msg"]]
            assert joined, logged
            assert joined[0] <= banner_seen, (joined, banner_seen)
        assert before_banner.startswith(
            "wazza-hooks dev: cleared var: expect.json, kafka/, wazza.db deleted, dev-secret kept"
        ), dev.output()
        assert not (var / "kafka").exists()
        assert not (var / "expect.json").exists()
        assert (var / "dev-secret").read_text() == "a" * 64 + "\n"
        with contextlib.closing(sqlite3.connect(var / "wazza.db")) as conn:  # the new store
            assert conn.execute("SELECT COUNT(*) FROM jobs").fetchall() == [(0,)]

        # Another --reset on the same folder while the stack runs: refused, nothing deleted.
        other, other_broker = two_free_ports()
        refused = run(
            hooks("dev", "--reset", "--yes", "--engine", "tansu", "--port", other,
                  "--broker-port", other_broker, "--metrics-port", 0, "--var", var)
        )  # fmt: skip
        assert refused.returncode == 1, refused
        assert f"a dev stack (pid {dev.pid}) is running on {var}" in refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert (var / "wazza.db").exists()
        assert not port_in_use("127.0.0.1", other_broker)

        os.killpg(dev.pid, signal.SIGINT)
        assert await dev.wait_exit(60) == 0, dev.output()


def test_dev_reset_without_a_terminal_asks_for_yes_and_deletes_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    leftovers(var)
    port, broker_port = two_free_ports()

    done = run(
        hooks("dev", "--reset", "--engine", "tansu", "--port", port, "--broker-port", broker_port,
              "--var", var)
    )  # fmt: skip
    alone = run(hooks("dev", "--yes", "--var", var))

    assert done.returncode == 2, done
    assert "--reset would delete expect.json, kafka/, wazza.db" in done.stderr
    assert "add --yes" in done.stderr
    assert (var / "kafka" / "data" / "meta.properties").exists()
    assert (var / "wazza.db").read_bytes() == b"an old store"
    assert alone.returncode == 2, alone
    assert "--yes goes with --reset" in alone.stderr
    assert "Traceback" not in done.stderr + alone.stderr


def test_dev_reset_asks_on_a_terminal_and_a_no_deletes_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    leftovers(var)
    port, broker_port = two_free_ports()
    leader, follower = pty.openpty()
    try:
        os.write(leader, b"n\n")
        done = subprocess.run(
            hooks("dev", "--reset", "--engine", "tansu", "--port", port,
                  "--broker-port", broker_port, "--var", var),
            stdin=follower, capture_output=True, text=True, env=subprocess_env(),
            timeout=REFUSAL_SECONDS,
        )  # fmt: skip
    finally:
        os.close(leader)
        os.close(follower)

    assert done.returncode == 1, done
    assert "Delete expect.json, kafka/, wazza.db in" in done.stdout
    assert "(dev-secret is kept)? [y/N]" in done.stdout
    assert "--reset not confirmed: nothing deleted" in done.stderr
    assert (var / "wazza.db").read_bytes() == b"an old store"


# --- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([str(BIN / "wazza-ingest")], id="wazza-ingest"),
        pytest.param(hooks("broker"), id="broker"),
        pytest.param(hooks("topics", "ensure"), id="topics-ensure"),
        pytest.param(hooks("dev"), id="dev"),
    ],
)
def test_help_of_each_command_exits_0_and_shows_an_example(argv: list[str]) -> None:
    result = run([*argv, "--help"])

    assert result.returncode == 0, result
    assert "example" in result.stdout.lower()
    example = result.stdout.lower().split("example", 1)[1]
    assert Path(argv[0]).name in example, "the example shows the command itself"


@pytest.mark.parametrize(
    ("argv", "listed"),
    [
        pytest.param(hooks(), ("broker", "topics", "dev"), id="wazza-hooks"),
        pytest.param(hooks("topics"), ("ensure",), id="topics"),
    ],
)
def test_help_of_each_command_group_exits_0_and_lists_its_commands(
    argv: list[str], listed: tuple[str, ...]
) -> None:
    result = run([*argv, "--help"])

    assert result.returncode == 0, result
    for name in listed:
        assert name in result.stdout
