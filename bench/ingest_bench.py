"""Ingest benchmark (`make bench`): the ingester against the Python ceiling, in one run.

(a) baseline: a minimal aiohttp app that only verifies the signature and answers 200;
(b) `wazza-ingest --workers 1` publishing every request to a local broker with acks=all:
    on Apache Kafka with idempotence on (the production default: the bar is on this one) and
    off, and on Tansu with it off (Tansu refuses idempotent producers); `--engine kafka|tansu|
    both` (default both: every variant in the same run, both brokers up throughout);
(c) on Kafka, when confluent-kafka is installed (it is not a project dependency):
    bench/confluent_app.py, which verifies as (a) and publishes with librdkafka's producer
    (acks=all, idempotence on), answering after the delivery report. A comparison, not product.
All take the same load from wrk (64 connections, valid signed requests, spec payloads over
1,000 jobs) on loopback. Rounds alternate the variants so that the machine's noise falls on all;
the best round of each is compared with the best baseline round. Bar: Kafka idempotent (b) >=
0.8 x (a) req/s and its p99 <= 10 ms (Tansu's (b) when Kafka is not measured). Each round's own
ratio, their median and the worst p99 are printed beside the verdict, for the spread. The
broker's resident memory (its process's VmRSS: the JVM, or Tansu) is sampled after start, at
its peak during each variant's load and at the end.

Results are printed and written as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from wazza_tools.dev.apache_kafka import ApacheKafka, java_and_maven
from wazza_tools.dev.localbroker import LocalBroker, free_port, port_in_use
from wazza_tools.dev.topics import default_topics, ensure_topics, local_topic_configs
from wazza_tools.send.webhooks import sign

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
            signed = sign(SECRET.encode(), body.encode(), int(ts))
            headers = "{" + ",".join(f"['{k}']='{v}'" for k, v in signed.items()) + "}"
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


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the command's ")".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    broker_pid: int | None = None,
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
        if name != "baseline":
            deadline = time.monotonic() + 20
            while b'"broker connected"' not in log.read_bytes():
                if time.monotonic() > deadline:
                    sys.exit("bench: the ingester never connected to the broker")
                time.sleep(0.1)
        run_wrk(wrk, script, port, args.warmup, args.connections)
        # The server's peak RSS, and the broker's while it serves this load (its JVM or Tansu).
        # And the CPU each used over the measured seconds, in cores (1.0 = one core busy).
        cpu_before = {pid: cpu_seconds(pid) for pid in (proc.pid, broker_pid) if pid}
        wall = time.monotonic()
        with RssSampler(proc.pid) as rss, RssSampler(broker_pid or proc.pid) as broker_rss:
            result = run_wrk(wrk, script, port, args.seconds, args.connections)
        wall = time.monotonic() - wall
        cores = {pid: round((cpu_seconds(pid) - t) / wall, 2) for pid, t in cpu_before.items()}
        result["rss_peak_mib"] = round(rss.peak_kib / 1024, 1)
        result["server_cores"] = cores[proc.pid]
        if broker_pid is not None:
            result["broker_rss_peak_mib"] = round(broker_rss.peak_kib / 1024, 1)
            result["broker_cores"] = cores[broker_pid]
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


def rss_mib(pid: int | None) -> float | None:
    """A process's resident memory now, in MiB (None when it is gone or unknown)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def confluent_available() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="measured seconds per round")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up seconds per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating a and b")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=1000, help="distinct jobs in the load")
    parser.add_argument(
        "--engine",
        choices=("kafka", "tansu", "both"),
        default="both",
        help="the local broker(s) (b) publishes to: Apache Kafka, Tansu, or both in one run",
    )
    parser.add_argument(
        "--confluent",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also measure bench/confluent_app.py on Kafka (auto: when confluent-kafka is "
        "installed; it is not a project dependency)",
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    engines = ("kafka", "tansu") if args.engine == "both" else (args.engine,)
    confluent = "kafka" in engines and (
        args.confluent == "yes" or (args.confluent == "auto" and confluent_available())
    )
    if args.confluent == "yes" and not confluent_available():
        sys.exit("bench: --confluent yes needs `pip install confluent-kafka`")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wazza-bench-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        brokers: dict[str, ApacheKafka | LocalBroker] = {}
        started_rss: dict[str, float | None] = {}
        for engine in engines:
            if engine == "kafka":
                missing = java_and_maven()
                if missing is not None:
                    sys.exit(f"bench: Apache Kafka cannot run here: {missing} (--engine tansu)")
                broker: ApacheKafka | LocalBroker = ApacheKafka(
                    folder / "kafka", log_path=folder / "kafka.log"
                )
            else:
                broker = LocalBroker(log_path=folder / "tansu.log")
            stack.enter_context(broker)
            asyncio.run(
                ensure_topics(
                    broker.bootstrap_servers,
                    default_topics(12),
                    configs=local_topic_configs(broker.memory_only),
                )
            )
            brokers[engine] = broker
            started_rss[engine] = rss_mib(broker.pid)
        script = write_script(folder, args.jobs)
        base_env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def ingest_env(engine: str, idempotence: bool) -> dict[str, str]:
            return {
                **base_env,
                "WAZZA_WEBHOOK_SECRETS": SECRET,
                "KAFKA_BOOTSTRAP_SERVERS": brokers[engine].bootstrap_servers,
                "KAFKA_ENABLE_IDEMPOTENCE": "true" if idempotence else "false",
            }

        def ingest(port: int) -> list[str]:
            return [sys.executable, "-m", "ingest.server", "--workers", "1", "--port", str(port)]

        # name -> (engine or None, command, environment)
        variants: dict[str, tuple[str | None, Callable[[int], list[str]], dict[str, str]]] = {
            "baseline": (
                None,
                lambda port: [
                    sys.executable, str(ROOT / "bench" / "baseline_app.py"), str(port), SECRET,
                ],
                base_env,
            ),
        }  # fmt: skip
        if "kafka" in brokers:
            variants["kafka-idempotent"] = ("kafka", ingest, ingest_env("kafka", True))
            variants["kafka-plain"] = ("kafka", ingest, ingest_env("kafka", False))
            if confluent:
                bootstrap = brokers["kafka"].bootstrap_servers
                variants["kafka-confluent"] = (
                    "kafka",
                    lambda port: [
                        sys.executable, str(ROOT / "bench" / "confluent_app.py"), str(port),
                        SECRET, bootstrap,
                    ],
                    base_env,
                )  # fmt: skip
        if "tansu" in brokers:
            # Tansu refuses idempotent producers: idempotence off, as before.
            variants["tansu-plain"] = ("tansu", ingest, ingest_env("tansu", False))
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for r in range(args.rounds):
            for name, (engine, command, env) in variants.items():
                log = folder / f"{name}.log"
                pid = brokers[engine].pid if engine else None
                res = measure(name, command, env, wrk, script, args, log, pid)
                rounds[name].append(res)
                broker_rss = f"  broker rss {res['broker_rss_peak_mib']} MiB" if engine else ""
                broker_cpu = f" {res['broker_cores']} cores" if engine else ""
                print(
                    f"round {r + 1} {name:>16}: {res['rps']:>9.0f} req/s  "
                    f"p50 {res['p50_us'] / 1000:.2f} ms  p99 {res['p99_us'] / 1000:.2f} ms  "
                    f"rss {res['rss_peak_mib']} MiB {res['server_cores']} cores"
                    f"{broker_rss}{broker_cpu}",
                    flush=True,
                )
        ended_rss = {engine: rss_mib(b.pid) for engine, b in brokers.items()}
        best = {name: max(results, key=lambda x: x["rps"]) for name, results in rounds.items()}
        base_rps = best["baseline"]["rps"]
        summary: dict[str, dict[str, Any]] = {}
        for name in variants:
            if name == "baseline":
                continue
            # The spread, beside the verdict: each round's own ratio (its a and b back to back)
            # and the worst p99 of any round.
            round_ratios = [
                round(i["rps"] / b["rps"], 3)
                for b, i in zip(rounds["baseline"], rounds[name], strict=True)
            ]
            summary[name] = {
                "engine": variants[name][0],
                "rps": round(best[name]["rps"]),
                "ratio": round(best[name]["rps"] / base_rps, 3),
                "p99_ms": best[name]["p99_us"] / 1000,
                "round_ratios": round_ratios,
                "median_round_ratio": statistics.median(round_ratios),
                "worst_p99_ms": max(res["p99_us"] for res in rounds[name]) / 1000,
                "server_cores": best[name]["server_cores"],
                "broker_cores": best[name].get("broker_cores"),
                "broker_rss_peak_mib": max(
                    res.get("broker_rss_peak_mib", 0) for res in rounds[name]
                ),
            }
        # The bar is on the product as deployed: Apache Kafka with idempotence on; on Tansu
        # alone, idempotence off as before.
        barred = "kafka-idempotent" if "kafka-idempotent" in summary else "tansu-plain"
        ratio = summary[barred]["ratio"]
        p99_ms = summary[barred]["p99_ms"]
        passed = ratio >= BAR_RATIO and p99_ms <= BAR_P99_MS
        report = {
            "benchmark": "ingest",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "loadavg_at_end": list(os.getloadavg()),
            },
            "code": code_version(),
            "load": {
                "connections": args.connections,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "rounds": args.rounds,
                "jobs": args.jobs,
            },
            "engines": list(engines),
            "broker_rss_mib": {
                engine: {"after_start": started_rss[engine], "at_end": ended_rss[engine]}
                for engine in brokers
            },
            "rounds": rounds,
            "best": best,
            "variants": summary,
            "barred": barred,
            "ratio": ratio,
            "ingest_p99_ms": p99_ms,
            "round_ratios": summary[barred]["round_ratios"],
            "median_round_ratio": summary[barred]["median_round_ratio"],
            "worst_ingest_p99_ms": summary[barred]["worst_p99_ms"],
            "bar": {"ratio": BAR_RATIO, "p99_ms": BAR_P99_MS, "variant": barred, "passed": passed},
        }
        out = RESULTS / f"ingest-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print()
        print(
            f"{'':>16} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'worst':>6} "
            f"{'RSS MiB':>8} {'broker':>7}  rounds"
        )
        for name, res in best.items():
            row = summary.get(name)
            worst = max(x["p99_us"] for x in rounds[name]) / 1000
            print(
                f"{name:>16} {res['rps']:>9.0f} "
                f"{row['ratio'] if row else 1.0:>6.3f} {res['p50_us'] / 1000:>7.2f} "
                f"{res['p99_us'] / 1000:>7.2f} "
                f"{worst:>6.2f} "
                f"{res['rss_peak_mib']:>8} {row['broker_rss_peak_mib'] if row else '':>7}  "
                f"{', '.join(f'{x:.3f}' for x in row['round_ratios']) if row else ''}"
            )
        for engine in brokers:
            print(
                f"broker {engine}: RSS {started_rss[engine]} MiB after start, "
                f"{ended_rss[engine]} MiB at the end"
            )
        verdict = "PASS" if passed else "FAIL"
        print(
            f"{barred}: ratio {ratio:.3f} (bar {BAR_RATIO}); p99 {p99_ms:.2f} ms "
            f"(bar {BAR_P99_MS}): {verdict}"
        )
        print(f"written: {out.relative_to(ROOT)}")
        return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
