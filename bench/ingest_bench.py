"""Ingest benchmark (`make bench`): the ingester against the Python ceiling, in one run.

(a) baseline: a minimal aiohttp app that only verifies the signature and answers 200;
(b) `wazza-ingest --workers 1` publishing every request to the local broker with acks=all.
Both take the same load from wrk (64 connections, valid signed requests, spec payloads over
1,000 jobs) on loopback. Rounds alternate a/b so that the machine's noise falls on both; the
best round of each is compared. Bar: (b) >= 0.8 x (a) req/s and (b) p99 <= 10 ms. Each round's
own ratio, their median and the worst ingest p99 are printed beside the verdict, for the spread.

Results are printed and written as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from wazza_hooks.localbroker import LocalBroker, free_port, port_in_use
from wazza_hooks.topics import default_topics, ensure_topics

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET = "bench-secret-not-for-production"
PATH = "/api/webhooks/wazza"
BAR_RATIO = 0.8
BAR_P99_MS = 10.0

_LUA = r"""
local reqs = {}
local n = 0
local i = 0
init = function(args)
  for _, r in ipairs(REQUESTS) do
    n = n + 1
    reqs[n] = wrk.format("POST", "%(path)s", r[1], r[2])
  end
end
request = function()
  i = i + 1
  return reqs[(i %% n) + 1]
end
done = function(summary, latency, requests)
  io.write(string.format(
    "WRKJSON {\"requests\":%%d,\"duration_us\":%%d,\"status_errors\":%%d,\"connect_errors\":%%d," ..
    "\"read_errors\":%%d,\"write_errors\":%%d,\"timeouts\":%%d,\"p50_us\":%%d,\"p90_us\":%%d," ..
    "\"p99_us\":%%d,\"max_us\":%%d}\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def ensure_wrk() -> str:
    """The wrk binary; installs Debian's package when missing and we may."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (Debian package)...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("bench: wrk is required (apt-get install wrk)")
    return found


def _lua_string(text: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in text
    return f"[{level}[{text}]{level}]"


def write_script(folder: Path, jobs: int) -> Path:
    """A wrk script holding `jobs` x 3 signed requests (processing, then completed or failed)."""
    ts = str(int(time.time()))
    entries = []
    for j in range(jobs):
        job = f"job_bench_{j:06d}"
        bodies = [
            {
                "event": "job.processing",
                "jobId": job,
                "status": "processing",
                "progress": {"percent": 45, "stage": "rendering", "estimatedTimeRemaining": 300},
                "timestamp": "2025-10-22T10:30:00Z",
            },
            {
                "event": "job.completed",
                "jobId": job,
                "status": "completed",
                "output": {
                    "url": f"https://cdn.wazza.ai/outputs/{job}.mp4",
                    "width": 1920,
                    "height": 1080,
                    "duration": 10,
                    "format": "mp4",
                },
                "metadata": {"provider": "openai", "model": "sora-2-pro", "creditsUsed": 15},
                "timestamp": "2025-10-22T10:40:00Z",
            },
        ]
        for doc in bodies:
            body = orjson.dumps(doc).decode()
            sig = hmac.new(SECRET.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
            headers = (
                "{['Content-Type']='application/json',"
                f"['X-Wazza-Timestamp']='{ts}',['X-Wazza-Signature']='{sig}'}}"
            )
            entries.append(f"{{{headers},{_lua_string(body)}}}")
    script = folder / "signed.lua"
    script.write_text("REQUESTS = {\n" + ",\n".join(entries) + "\n}\n" + _LUA % {"path": PATH})
    return script


class RssSampler:
    """Peak resident memory of a process, sampled every 100 ms while a load runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except OSError:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_listening(port: int, proc: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: server exited with {proc.returncode}")
        if port_in_use("127.0.0.1", port):
            return
        time.sleep(0.05)
    sys.exit("bench: server did not listen")


def run_wrk(wrk: str, script: Path, port: int, seconds: int, connections: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{PATH}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
            data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
            return data
    raise SystemExit(f"bench: wrk printed no result:\n{out}")


def measure(
    name: str,
    command: Callable[[int], list[str]],
    env: dict[str, str],
    wrk: str,
    script: Path,
    args: argparse.Namespace,
    log: Path,
) -> dict[str, Any]:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command(port),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_listening(port, proc)
        if name == "ingest":
            deadline = time.monotonic() + 20
            while b'"broker connected"' not in log.read_bytes():
                if time.monotonic() > deadline:
                    sys.exit("bench: the ingester never connected to the broker")
                time.sleep(0.1)
        run_wrk(wrk, script, port, args.warmup, args.connections)
        with RssSampler(proc.pid) as rss:
            result = run_wrk(wrk, script, port, args.seconds, args.connections)
        result["rss_peak_mib"] = round(rss.peak_kib / 1024, 1)
        non_2xx = result["status_errors"] + result["timeouts"] + result["connect_errors"]
        if non_2xx:
            sys.exit(f"bench: {name} answered {non_2xx} requests with errors; see {log}")
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the work tree differed from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:  # no git: a copy of the sources
        return {"commit": None, "modified": None}
    return {"commit": commit or None, "modified": bool(changed) if commit else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per round")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating a and b")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=1000, help="distinct jobs in the load")
    args = parser.parse_args()
    wrk = ensure_wrk()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wazza-bench-") as tmp, LocalBroker() as broker:
        folder = Path(tmp)
        asyncio.run(ensure_topics(broker.bootstrap_servers, default_topics(12)))
        script = write_script(folder, args.jobs)
        base_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        ingest_env = {
            **base_env,
            "WAZZA_WEBHOOK_SECRETS": SECRET,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
        }
        commands: dict[str, Callable[[int], list[str]]] = {
            "baseline": lambda port: [
                sys.executable, str(ROOT / "bench" / "baseline_app.py"), str(port), SECRET,
            ],
            "ingest": lambda port: [
                sys.executable, "-m", "ingest.server", "--workers", "1", "--port", str(port),
            ],
        }  # fmt: skip
        envs = {"baseline": base_env, "ingest": ingest_env}
        rounds: dict[str, list[dict[str, Any]]] = {"baseline": [], "ingest": []}
        for r in range(args.rounds):
            for name in ("baseline", "ingest"):
                log = folder / f"{name}.log"
                res = measure(name, commands[name], envs[name], wrk, script, args, log)
                rounds[name].append(res)
                print(
                    f"round {r + 1} {name:>8}: {res['rps']:>9.0f} req/s  "
                    f"p50 {res['p50_us'] / 1000:.2f} ms  p99 {res['p99_us'] / 1000:.2f} ms  "
                    f"rss {res['rss_peak_mib']} MiB",
                    flush=True,
                )
        best = {name: max(results, key=lambda x: x["rps"]) for name, results in rounds.items()}
        ratio = best["ingest"]["rps"] / best["baseline"]["rps"]
        p99_ms = best["ingest"]["p99_us"] / 1000
        passed = ratio >= BAR_RATIO and p99_ms <= BAR_P99_MS
        # The spread, beside the verdict: each round's own ratio (its a and b back to back) and
        # the worst p99 of any ingest round.
        round_ratios = [
            round(i["rps"] / b["rps"], 3)
            for b, i in zip(rounds["baseline"], rounds["ingest"], strict=True)
        ]
        worst_p99_ms = max(res["p99_us"] for res in rounds["ingest"]) / 1000
        report = {
            "benchmark": "ingest",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "code": code_version(),
            "load": {
                "connections": args.connections,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "jobs": args.jobs,
            },
            "rounds": rounds,
            "best": best,
            "ratio": round(ratio, 3),
            "ingest_p99_ms": p99_ms,
            "round_ratios": round_ratios,
            "median_round_ratio": statistics.median(round_ratios),
            "worst_ingest_p99_ms": worst_p99_ms,
            "bar": {"ratio": BAR_RATIO, "p99_ms": BAR_P99_MS, "passed": passed},
        }
        out = RESULTS / f"ingest-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        b, i = best["baseline"], best["ingest"]
        print()
        print(f"{'':>10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}")
        for name, res in (("baseline", b), ("ingest", i)):
            print(
                f"{name:>10} {res['rps']:>9.0f} {res['p50_us'] / 1000:>8.2f} "
                f"{res['p99_us'] / 1000:>8.2f} {res['rss_peak_mib']:>8}"
            )
        verdict = "PASS" if passed else "FAIL"
        print(
            f"ratio ingest/baseline = {ratio:.3f} (bar {BAR_RATIO}); ingest p99 = {p99_ms:.2f} ms "
            f"(bar {BAR_P99_MS}): {verdict}"
        )
        print(
            f"per round: ratios {', '.join(f'{r:.3f}' for r in round_ratios)} "
            f"(median {statistics.median(round_ratios):.3f}); "
            f"worst ingest p99 {worst_p99_ms:.2f} ms"
        )
        print(f"written: {out.relative_to(ROOT)}")
        return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
