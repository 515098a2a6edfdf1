"""Ingest under attack (`make bench`): the ingester's rate and p99 while hostile clients hit it.

One `wazza-ingest --workers 1` publishing to a local broker takes the ingest benchmark's load
(wrk, 64 connections, valid signed requests), in rounds that alternate:
(a) undisturbed;
(b) while 200 connections each send the headers of a 1 MiB - 1 byte body and 64 KiB of it, then
    stall (reconnecting half a second after the ingester closes them), and a 1 MB gzip body that
    inflates to 1 GiB arrives every second.
Bars: (b) >= 0.8 x (a) req/s, (b) p99 <= 2 x (a) p99, and the ingester's resident memory back
under 100 MB within 10 s after the attack stops. The best round of each is compared.

Results are printed and written as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ingest_bench import (
    PATH,
    RESULTS,
    ROOT,
    SECRET,
    RssSampler,
    code_version,
    ensure_wrk,
    run_wrk,
    wait_listening,
    write_script,
)

from wazza_tools.dev.apache_kafka import local_broker
from wazza_tools.dev.localbroker import free_port
from wazza_tools.dev.topics import default_topics, ensure_topics

BAR_RATIO = 0.8
BAR_P99_FACTOR = 2.0
BAR_RSS_MB = 100.0
BAR_RSS_SECONDS = 10.0
SLOW_BODIES = 200
# What each slow body sends before it stalls: enough to be held in memory, not the whole body.
SLOW_SENT = 64 * 1024
SLOW_DECLARED = 1024 * 1024 - 1
# A closed slow connection comes back after this long (an attacker keeping up the pressure).
SLOW_RECONNECT_SECONDS = 0.5
BOMB_EVERY_SECONDS = 1.0


class Attack:
    """The hostile clients, in a thread of their own, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.bomb = gzip.compress(b"\0" * (1 << 30), compresslevel=9)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.slow_cycles = 0
        self.bombs = 0

    def __enter__(self) -> Attack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        tasks = [asyncio.create_task(self._slow()) for _ in range(SLOW_BODIES)]
        tasks.append(asyncio.create_task(self._bombs()))
        await asyncio.to_thread(self._stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _slow(self) -> None:
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {SLOW_DECLARED}\r\n\r\n"
        ).encode()
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(head + b"{" + b" " * (SLOW_SENT - 1))
                    await writer.drain()
                    await reader.read()  # until the ingester answers and closes
                finally:
                    writer.close()
                self.slow_cycles += 1
            await asyncio.sleep(SLOW_RECONNECT_SECONDS)

    async def _bombs(self) -> None:
        head = (
            f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Encoding: gzip\r\nContent-Length: {len(self.bomb)}\r\n\r\n"
        ).encode()
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                try:
                    writer.write(head + self.bomb)
                    with contextlib.suppress(OSError):
                        await writer.drain()
                    with contextlib.suppress(OSError):
                        await reader.read()
                finally:
                    writer.close()
                self.bombs += 1
            await asyncio.sleep(BOMB_EVERY_SECONDS)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per round")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (a) and (b)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=1000, help="distinct jobs in the load")
    parser.add_argument("--engine", choices=("kafka", "tansu"), default=None)
    args = parser.parse_args()
    wrk = ensure_wrk()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wazza-attack-") as tmp:
        folder = Path(tmp)
        broker, _ = local_broker(args.engine, folder, free_port())
        with broker:
            asyncio.run(ensure_topics(broker.bootstrap_servers, default_topics(12)))
            script = write_script(folder, args.jobs)
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "WAZZA_WEBHOOK_SECRETS": SECRET,
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "KAFKA_ENABLE_IDEMPOTENCE": "false" if broker.memory_only else "true",
                "WAZZA_LOG_REQUESTS": "false",
            }
            port = free_port()
            log = folder / "ingest.log"
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "ingest.server", "--workers", "1", "--port", str(port)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                report = _measure(args, wrk, script, port, proc, log)
            finally:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=20)
                if proc.poll() is None:
                    proc.kill()
    report["engine"] = "tansu" if broker.memory_only else "kafka"
    path = RESULTS / f"attack-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {path.relative_to(ROOT)}")
    return 0 if report["passed"] else 1


def _measure(
    args: argparse.Namespace,
    wrk: str,
    script: Path,
    port: int,
    proc: subprocess.Popen[bytes],
    log: Path,
) -> dict[str, Any]:
    wait_listening(port, proc)
    deadline = time.monotonic() + 60
    while b'"broker connected"' not in log.read_bytes():
        if time.monotonic() > deadline:
            sys.exit("bench: the ingester never connected to the broker")
        time.sleep(0.1)
    run_wrk(wrk, script, port, args.warmup, args.connections)
    rounds: dict[str, list[dict[str, Any]]] = {"undisturbed": [], "attacked": []}
    recovery: list[float | None] = []
    for r in range(args.rounds):
        with RssSampler(proc.pid) as rss:
            calm = run_wrk(wrk, script, port, args.seconds, args.connections)
        calm["rss_peak_mib"] = round(rss.peak_kib / 1024, 1)
        rounds["undisturbed"].append(calm)
        with RssSampler(proc.pid) as rss, Attack(port) as attack:
            time.sleep(2)  # the slow bodies in place before the measured load starts
            hit = run_wrk(wrk, script, port, args.seconds, args.connections)
        hit["rss_peak_mib"] = round(rss.peak_kib / 1024, 1)
        hit["slow_cycles"] = attack.slow_cycles
        hit["bombs"] = attack.bombs
        rounds["attacked"].append(hit)
        # After the attack: how long until the resident memory is back under the bar.
        stopped = time.monotonic()
        back: float | None = None
        while time.monotonic() - stopped < BAR_RSS_SECONDS * 2:
            if rss_mb(proc.pid) < BAR_RSS_MB:
                back = round(time.monotonic() - stopped, 2)
                break
            time.sleep(0.25)
        recovery.append(back)
        print(
            f"round {r + 1}: undisturbed {calm['rps']:.0f} req/s p99 {calm['p99_us'] / 1000:.2f} ms"
            f" | attacked {hit['rps']:.0f} req/s p99 {hit['p99_us'] / 1000:.2f} ms, "
            f"{hit['status_errors']} non-2xx, rss peak {hit['rss_peak_mib']} MiB, "
            f"{attack.slow_cycles} slow bodies closed, {attack.bombs} bombs | rss under "
            f"{BAR_RSS_MB:g} MB after {back} s",
            flush=True,
        )
    best = {name: max(results, key=lambda x: x["rps"]) for name, results in rounds.items()}
    ratio = best["attacked"]["rps"] / best["undisturbed"]["rps"]
    p99_factor = best["attacked"]["p99_us"] / best["undisturbed"]["p99_us"]
    rss_ok = all(b is not None and b <= BAR_RSS_SECONDS for b in recovery)
    passed = ratio >= BAR_RATIO and p99_factor <= BAR_P99_FACTOR and rss_ok
    print(
        f"attacked / undisturbed: {ratio:.3f} (bar {BAR_RATIO}), p99 x{p99_factor:.2f} "
        f"(bar {BAR_P99_FACTOR}), rss back under {BAR_RSS_MB:g} MB after {recovery} s "
        f"(bar {BAR_RSS_SECONDS:g} s): {'met' if passed else 'NOT met'}",
        flush=True,
    )
    return {
        "benchmark": "attack",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "code": code_version(),
        "rounds": rounds,
        "ratio": round(ratio, 3),
        "p99_factor": round(p99_factor, 2),
        "rss_back_seconds": recovery,
        "passed": passed,
    }


if __name__ == "__main__":
    sys.exit(main())
