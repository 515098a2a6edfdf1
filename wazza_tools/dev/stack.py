"""`wazza-hooks dev`: the local stack in one terminal (what `make run` starts).

The local broker, its topics, the ingester and the three consumer services (on SQLite by
default); Ctrl-C stops them all. The terminal shows the deliveries as `wazza-hooks tail` does
(each webhook, then what each service made of it) and the services' warnings and errors; their
whole JSON logs go to `VAR/logs/` (`--logs json`: prefixed, coloured in the terminal instead).
The development secret is generated once and kept in `./var/dev-secret`. A running stack holds
`VAR/dev.lock` (an advisory lock the system drops with the process, however it ends), so that
a second stack or a `--reset` on the same folder is refused rather than pulling the state from
under it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import IO, Any

import orjson

from wazza_hooks import contract
from wazza_hooks.kafka_client import PLAINTEXT
from wazza_tools.dev.apache_kafka import TANSU_LACKS, local_broker
from wazza_tools.dev.localbroker import port_in_use
from wazza_tools.dev.topics import (
    DEFAULT_PARTITIONS,
    default_topics,
    ensure_topics,
    local_topic_configs,
)
from wazza_tools.options import DEFAULT_DATABASE_URL

# The store the jobs and sender commands read by default: the same file.

_COLOURS = {
    "broker": "\033[35m",
    "ingest": "\033[36m",
    "completion": "\033[32m",
    "failure": "\033[31m",
    "progress": "\033[33m",
}
_SERVICES = ("completion", "failure", "progress")
# The variables of wazza_hooks/kafka_client.py, kept from the stack's services.
_SECURITY_VARIABLES = ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SSL_", "KAFKA_SASL_")
_RESET = "\033[0m"
# The ingester's own graceful stop is bounded by its shutdown timeout (10 s) plus the flush.
_STOP_SECONDS = 15.0
# On a stop, a memory-only broker's records are waited for until the consumers applied them, at
# most this long: the three services apply thousands of records a second, so a backlog that
# takes longer is a consumer that is stuck, not one that is slow; a second Ctrl-C ends it sooner.
_DRAIN_SECONDS = 120.0
# How often the drain compares the consumers' stored offsets with the log's end, and prints
# the records left.
_DRAIN_POLL_SECONDS = 0.5
# The stack's lock in its state folder, and what a reset keeps there: the secret senders and
# registrations were given.
_LOCK_FILE = "dev.lock"
_KEPT_BY_RESET = ("dev-secret", _LOCK_FILE)
# What a consumer says once it joined its group and sought its partitions (consumers/runtime.py):
# from then on it takes what the ingester publishes.
_JOINED = "joined group"
# The log levels a service's line is shown at in the terminal with `--logs view` (all of them
# go to its file): what a person must see at once.
_SHOWN_LEVELS = frozenset({"warning", "error", "critical"})
# The banner waits for every part to be ready; past this it says which it is still waiting for
# (a broker starting on a loaded machine, a store that is locked), then keeps waiting.
_SLOW_START_SECONDS = 20.0
# The ingester's /readyz is asked this often while the stack starts, each answer awaited this long.
_READY_POLL_SECONDS = 0.2
_READY_TIMEOUT_SECONDS = 1.0


def add_dev_parser(sub: Any) -> None:
    """Register the `dev` subcommand."""
    dev = sub.add_parser(
        "dev",
        help="run the local stack: broker, topics, ingester, consumers",
        description=(
            "Run the local stack in the foreground; Ctrl-C stops everything. The commands to try "
            "are printed once the ingester and the three consumers are ready. --reset first "
            "clears the state folder (the broker's log, the store, expect files; the dev secret "
            "is kept), after asking (or with --yes); refused while a stack runs on that folder."
        ),
        epilog=(
            "examples:\n  wazza-hooks dev\n  wazza-hooks dev --port 8081 --ingesters 2\n"
            "  wazza-hooks dev --reset\n  wazza-hooks dev --reset --yes --var /tmp/wazza-var"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from wazza_tools.dev.args import add_engine_argument

    add_engine_argument(dev)
    dev.add_argument("--port", type=int, default=8080, help="the ingester's port (default 8080)")
    dev.add_argument("--broker-port", type=int, default=9092, help="the broker's port (9092)")
    dev.add_argument("--ingesters", type=int, default=1, help="ingester worker processes (1)")
    dev.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help=f"partitions of each topic it creates (default {DEFAULT_PARTITIONS})",
    )
    dev.add_argument("--var", type=Path, default=Path("var"), help="state folder (./var)")
    dev.add_argument(
        "--database-url",
        "--store",  # its name before every command took --database-url
        dest="store",
        metavar="URL",
        default=None,
        help="the consumers' store, as every command names it (default "
        "sqlite:///./var/wazza.db: wazza.db in --var; --store is the same option)",
    )
    dev.add_argument(
        "--reset",
        action="store_true",
        help="clear the state folder first (the broker's log, the store, expect files; "
        "dev-secret is kept); asks on a terminal",
    )
    dev.add_argument(
        "--yes", action="store_true", help="with --reset: clear without asking (scripts, CI)"
    )
    dev.add_argument(
        "--logs",
        choices=("view", "json"),
        default="view",
        help="view (default): the deliveries live (as `wazza-hooks tail`) and the services' "
        "warnings, their JSON logs in VAR/logs/; json: every service's JSON log lines, prefixed",
    )
    dev.add_argument(
        "--metrics-port",
        type=int,
        default=9101,
        help="first of the three consumers' metrics ports (9101, 9102, 9103; 0: none)",
    )


def dev_secret(var: Path) -> str:
    """The development secret kept in var/dev-secret, made on first use."""
    path = var / "dev-secret"
    if path.exists():
        return path.read_text().strip()
    var.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _pipe(name: str, stream: IO[bytes], joined: threading.Event, log: IO[str] | None) -> None:
    """A service's output: every line to its log file (`--logs view`), to the terminal where
    there is none, or where the line is no JSON log line (a traceback) or one of _SHOWN_LEVELS."""
    colour = _COLOURS.get(name, "") if sys.stdout.isatty() else ""
    reset = _RESET if colour else ""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        if _JOINED in line:
            joined.set()
        if log is not None:
            log.write(line + "\n")
            log.flush()
            if _level(line) not in _SHOWN_LEVELS:
                continue
        sys.stdout.write(f"{colour}[{name:>7}]{reset} {line}\n")
        sys.stdout.flush()


def _level(line: str) -> str | None:
    """The level of a JSON log line (wazza_hooks/logs.py); None for anything else."""
    try:
        document = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    level = document.get("level") if isinstance(document, dict) else None
    return level if isinstance(level, str) else None


def _store_of(args: argparse.Namespace) -> str:
    """--database-url, else wazza.db in the state folder (DEFAULT_DATABASE_URL for ./var)."""
    if args.store is not None:
        return str(args.store)
    return DEFAULT_DATABASE_URL if args.var == Path("var") else f"sqlite:///{args.var}/wazza.db"


def _lock_state(var: Path) -> IO[str] | None:
    """The stack's lock on `var`, held until this process ends; None (said on stderr) when
    another stack holds it."""
    var.mkdir(parents=True, exist_ok=True)
    handle = (var / _LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        print(
            f"wazza-hooks dev: a dev stack (pid {pid}) is running on {var}: stop it (Ctrl-C in "
            "its terminal) first, or pass another --var",
            file=sys.stderr,
        )
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _broker_running_on(var: Path) -> bool:
    """True when an Apache Kafka broker (`wazza-hooks broker`) has its log under `var`: Kafka
    locks its log folder (`.lock`, a POSIX record lock) while it runs."""
    lock = var / "kafka" / "data" / ".lock"
    try:
        with lock.open("r+") as handle:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False


def _reset(var: Path, store: str, yes: bool) -> int:
    """Clear the state folder but what _KEPT_BY_RESET names, after asking; 0 when cleared or
    nothing was there, else the exit code (said on stderr). The caller holds the stack's lock."""
    if _broker_running_on(var):
        print(
            f"wazza-hooks dev: a broker (`wazza-hooks broker`) is running on {var / 'kafka'}: "
            "stop it first",
            file=sys.stderr,
        )
        return 1
    doomed = sorted(p for p in var.iterdir() if p.name not in _KEPT_BY_RESET)
    if not doomed:
        print(f"wazza-hooks dev: --reset: nothing to clear in {var}", flush=True)
        return 0
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in doomed)
    if not yes:
        if not sys.stdin.isatty():
            print(
                f"wazza-hooks dev: --reset would delete {names} in {var}: add --yes to do so "
                "without a terminal to ask on",
                file=sys.stderr,
            )
            return 2
        answer = input(f"Delete {names} in {var} (dev-secret is kept)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("wazza-hooks dev: --reset not confirmed: nothing deleted", file=sys.stderr)
            return 1
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"wazza-hooks dev: cleared {var}: {names} deleted, dev-secret kept", flush=True)
    if not store.startswith("sqlite:") or not _inside(store, var):
        print(f"wazza-hooks dev: the store {store} is not in {var}: not cleared", flush=True)
    return 0


def _inside(store: str, var: Path) -> bool:
    from consumers.store.sqlite import sqlite_path

    return sqlite_path(store).resolve().is_relative_to(var.resolve())


def _ingester_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/readyz", timeout=_READY_TIMEOUT_SECONDS
        ) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def run_dev(args: argparse.Namespace) -> int:
    """Run the stack until Ctrl-C or SIGTERM; 0 on a clean stop."""
    if args.yes and not args.reset:
        print("wazza-hooks dev: --yes goes with --reset", file=sys.stderr)
        return 2
    lock = _lock_state(args.var)
    if lock is None:
        return 1
    with lock:
        return _run_locked(args)


def _run_locked(args: argparse.Namespace) -> int:
    """The stack, its state folder locked."""
    import asyncio

    store = _store_of(args)
    if store.startswith("sqlite:"):
        from consumers.store import StoreError
        from consumers.store.sqlite import sqlite_path

        try:
            sqlite_path(store)
        except StoreError as exc:
            print(f"wazza-hooks dev: --database-url: {exc}", file=sys.stderr)
            return 2
    busy = [("ingester", args.port), ("broker", args.broker_port)]
    if args.engine != "tansu":
        busy.append(("broker's controller", args.broker_port + 1))
    if args.metrics_port:
        busy += [(f"{n} metrics", args.metrics_port + i) for i, n in enumerate(_SERVICES)]
    for what, port in busy:
        if port_in_use("127.0.0.1", port):
            print(
                f"wazza-hooks dev: port {port} for the {what} is busy: a stack is probably running "
                f"already (stop it with Ctrl-C in its terminal, or pass --port/--broker-port)",
                file=sys.stderr,
            )
            return 1
    if args.reset and (code := _reset(args.var, store, args.yes)):
        return code
    secret = dev_secret(args.var)
    stopping = threading.Event()
    cut_short = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        # The first signal stops the stack (after the drain); a second one ends the drain.
        if stopping.is_set():
            cut_short.set()
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # A closed terminal stops the stack as Ctrl-C does: its processes run in sessions of their
    # own, out of the terminal's reach, and would otherwise be left running on their ports.
    signal.signal(signal.SIGHUP, stop)
    broker, fallback = local_broker(args.engine, args.var, args.broker_port)
    if fallback is not None:
        print(f"wazza-hooks dev: Tansu, not Apache Kafka: {fallback}. {TANSU_LACKS}.", flush=True)
    broker.start()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, IO[str]] = {}  # closed in the finally, once the services have stopped
    pipes: list[threading.Thread] = []
    try:
        asyncio.run(
            ensure_topics(
                broker.bootstrap_servers,
                default_topics(args.partitions),
                configs=local_topic_configs(broker.memory_only),
                fix=True,
            )
        )
        env = {
            # The local broker listens in plaintext: TLS or SASL settings exported for a real
            # cluster would only keep the stack's services from reaching it.
            **{k: v for k, v in os.environ.items() if not k.startswith(_SECURITY_VARIABLES)},
            "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            "WAZZA_WEBHOOK_SECRETS": secret,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            # Tansu refuses InitProducerId; Apache Kafka keeps the production default (on).
            "KAFKA_ENABLE_IDEMPOTENCE": "false" if broker.memory_only else "true",
            "DATABASE_URL": store,
        }
        commands = {
            "ingest": [sys.executable, "-m", "ingest.server", "--port", str(args.port),
                       "--workers", str(args.ingesters)],
            **{
                name: [sys.executable, "-m", "consumers.cli", name,
                       "--metrics-port", str(args.metrics_port + i if args.metrics_port else 0)]
                for i, name in enumerate(_SERVICES)
            },
        }  # fmt: skip
        joined = {name: threading.Event() for name in _SERVICES}
        if args.logs == "view":
            (args.var / "logs").mkdir(parents=True, exist_ok=True)
            for name in commands:
                logs[name] = (args.var / "logs" / f"{name}.log").open("a")
        for name, command in commands.items():
            procs[name] = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches them through us, in order
            )
            stream = procs[name].stdout
            assert stream is not None  # noqa: S101
            said = joined.get(name, threading.Event())
            log = logs.get(name)
            pipe = threading.Thread(target=_pipe, args=(name, stream, said, log), daemon=True)
            pipe.start()
            pipes.append(pipe)
        started = time.monotonic()
        waiting_said = False
        announced = False
        while not stopping.is_set():
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"wazza-hooks dev: {name} exited ({proc.returncode})", file=sys.stderr)
                    return 1
            if not announced:
                # The commands to paste are printed once they work: the ingester answers
                # /readyz and every consumer joined its group.
                pending = [n for n in _SERVICES if not joined[n].is_set()]
                if not _ingester_ready(args.port):
                    pending.insert(0, "the ingester")
                if not pending:
                    _banner(args, store, broker.bootstrap_servers, broker.memory_only)
                    announced = True
                    if args.logs == "view":
                        # The deliveries from now on, below the banner, as `wazza-hooks tail`.
                        tail = [sys.executable, "-m", "wazza_tools.cli", "tail",
                                "--bootstrap-servers", broker.bootstrap_servers,
                                "--database-url", store]  # fmt: skip
                        procs["tail"] = subprocess.Popen(  # noqa: S603 - our own module
                            tail, env=env, start_new_session=True
                        )
                elif not waiting_said and time.monotonic() - started > _SLOW_START_SECONDS:
                    print(
                        f"wazza-hooks dev: waiting for {', '.join(pending)} to be ready", flush=True
                    )
                    waiting_said = True
            stopping.wait(_READY_POLL_SECONDS)
        return 0
    finally:
        # The view first, then the ingester: nothing new is acknowledged while the consumers
        # catch up.
        viewer = procs.pop("tail", None)
        if viewer is not None:
            viewer.send_signal(signal.SIGTERM)  # not waited for: it holds nothing to drain
        ingest = procs.pop("ingest", None)
        if ingest is not None:
            _stop_process(ingest)
        if broker.memory_only and procs and all(p.poll() is None for p in procs.values()):
            asyncio.run(_drain(broker.bootstrap_servers, store, cut_short))
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if viewer is not None:
            _stop_process(viewer)
        broker.stop()
        time.sleep(0.05)
        for pipe in pipes:  # each ends at its process's end of output
            pipe.join(timeout=_STOP_SECONDS)
        for log in logs.values():
            log.close()
        print("wazza-hooks dev: stopped", flush=True)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL past the stop bound."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _records_left(bootstrap: str, store_url: str) -> dict[str, int]:
    """Per consumer service, the records of the raw topic it has not applied yet.

    The log's end is the high watermark of a fetch from where the services stand, not
    ListOffsets(latest): the local broker (Tansu) answers that short of the end for a partition
    whose last record batch holds several records."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from consumers.batch import stored_offsets
    from consumers.store import open_store

    store = await open_store(store_url)
    try:
        stored = {s: await stored_offsets(store, s, contract.RAW_TOPIC) for s in _SERVICES}
    finally:
        await store.close()
    # The local broker's own listener: plaintext (see run_dev).
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **PLAINTEXT.client_options()
    )
    await consumer.start()
    try:
        # Fresh metadata: the consumer's cache holds only the topics it tracks (none here).
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(contract.RAW_TOPIC) or set()
        tps = [TopicPartition(contract.RAW_TOPIC, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            held = [o.next_offset for o in (s.get(tp.partition) for s in stored.values()) if o]
            consumer.seek(tp, min(held) if len(held) == len(stored) else 0)
        deadline = time.monotonic() + _DRAIN_POLL_SECONDS * 10
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError("no fetch answered for every partition")
            await consumer.getmany(timeout_ms=100)
        ends = {tp.partition: int(consumer.highwater(tp)) for tp in tps}
    finally:
        await consumer.stop()
    return {
        service: sum(
            max(0, end - (held[p].next_offset if p in held else 0)) for p, end in ends.items()
        )
        for service, held in stored.items()
    }


async def _drain(bootstrap: str, store_url: str, cut_short: threading.Event) -> None:
    """Wait until every consumer service applied every record of the memory-only broker (which
    loses them when it stops), with a progress line; at most _DRAIN_SECONDS, or until
    `cut_short` (a second Ctrl-C). Says what was left unapplied, if anything."""
    import asyncio

    deadline = time.monotonic() + _DRAIN_SECONDS
    left: dict[str, int] = {}
    said = ""
    while True:
        try:
            left = await _records_left(bootstrap, store_url)
        except Exception as exc:  # the broker or the store gone: nothing more to wait for
            print(f"wazza-hooks dev: cannot tell what is left to apply ({exc!r})", flush=True)
            return
        total = sum(left.values())
        if not total:
            if said:
                print("wazza-hooks dev: every acknowledged record applied", flush=True)
            return
        if cut_short.is_set() or time.monotonic() >= deadline:
            break
        line = ", ".join(f"{s} {n}" for s, n in left.items() if n)
        if line != said:
            print(
                f"wazza-hooks dev: waiting for the consumers to apply what the memory-only "
                f"broker holds: {line} records left (Ctrl-C again to stop now and lose them)",
                flush=True,
            )
            said = line
        await asyncio.sleep(_DRAIN_POLL_SECONDS)
    line = ", ".join(f"{s} {n}" for s, n in left.items() if n)
    print(
        f"wazza-hooks dev: stopped before the consumers applied every acknowledged record: "
        f"{line} not applied, lost with the memory-only broker",
        flush=True,
    )


def _banner(args: argparse.Namespace, store_url: str, bootstrap: str, memory_only: bool) -> None:
    url = f"http://127.0.0.1:{args.port}/api/webhooks/wazza"
    secret_file = args.var / "dev-secret"
    hooks = _own_command("wazza-hooks")
    # The sender commands find the URL, the secret and the store by themselves when this runs
    # with its defaults from the current folder; otherwise they are spelled out.
    # A secret or store exported in this shell would win over the defaults: spelled out then.
    to = "" if args.port == 8080 else f" --url {url}"
    exported_secret = os.environ.get("WAZZA_WEBHOOK_SECRETS") or os.environ.get(
        "WAZZA_WEBHOOK_SECRET"
    )
    if args.var != Path("var") or exported_secret:
        to += f' --secret "$(cat {secret_file})"'
    broker_note = (
        "Tansu, memory only: a stop loses every record it holds, so Ctrl-C first waits until "
        "the consumers applied them; a second Ctrl-C stops at once"
        if memory_only
        else f"Apache Kafka, its log kept in {args.var / 'kafka'} across restarts"
    )
    consumers = (
        f"ports {args.metrics_port}-{args.metrics_port + 2} (consumers)"
        if args.metrics_port
        else "none for the consumers (--metrics-port 0)"
    )
    exported_store = os.environ.get("DATABASE_URL")
    store = (
        f"DATABASE_URL={store_url} "
        if store_url != DEFAULT_DATABASE_URL or (exported_store and exported_store != store_url)
        else ""
    )
    print(
        "\n".join(
            [
                "",
                "wazza-hooks is running locally",
                f"  webhook URL      {url}",
                f"  secret           kept in {secret_file} (generated for this machine)",
                f"  broker           {bootstrap} ({broker_note})",
                f"  metrics          http://127.0.0.1:{args.port}/metrics (ingester), {consumers}",
                f"  store            {store_url}",
                f"  logs             {args.var / 'logs'}/*.log (the services' JSON lines)"
                if args.logs == "view"
                else "  logs             below, each service's JSON lines",
                "  send a signed test event, as Wazza would:",
                f"    {hooks} send-test --event completed --job-id job_abc123{to}",
                "  see the result:",
                f"    {store}{hooks} jobs show job_abc123",
                "  send 100 jobs like Wazza (progress, then completed or failed), and check them:",
                f"    {hooks} simulate --jobs 100 --duplicates 0.1 --reorder 0.1"
                f"{to} --expect {args.var}/expect.json",
                f"    {store}{hooks} verify --expect {args.var}/expect.json --wait 10",
                "  Ctrl-C stops everything."
                + (
                    " The deliveries follow, as `wazza-hooks tail` shows them."
                    if args.logs == "view"
                    else ""
                ),
                "",
            ]
        ),
        flush=True,
    )


def _own_command(name: str) -> str:
    """How to run one of this installation's commands from the current folder: its path beside
    the running Python (`.venv/bin/wazza-hooks` after `make run`), else its bare name."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    with contextlib.suppress(ValueError):
        relative = Path(os.path.relpath(path))
        if relative.parts[0] != "..":
            return str(relative)
    return str(path)
