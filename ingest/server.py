"""`wazza-ingest`: serve the ingester, in one process or N workers sharing one port.

With `--workers N` (N > 1) this process is a supervisor: it starts N worker processes that each
bind the port with SO_REUSEPORT (the kernel spreads connections among them), switches
prometheus-client to multiprocess mode so that `/metrics` on any worker reports all of them,
restarts a worker that dies, and on SIGTERM/SIGINT passes the signal on and waits for every
worker to finish its in-flight requests.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

from wazza_hooks.config import ConfigError, port_argument, version, whole_number

if TYPE_CHECKING:  # the settings import stays lazy: see _supervise and multiprocess metrics
    from .settings import IngestSettings

# In-flight requests end within the publish deadline (at most 4.5 s); this leaves room for the
# producer's flush as well, under the 30 s grace Kubernetes gives by default.
_SHUTDOWN_TIMEOUT_SECONDS = 10.0
# Connections the kernel queues before the loop accepts them: aiohttp's own default.
_BACKLOG = 128
# A worker that dies this soon after its start is not crashing at random: it cannot start (port
# taken, bad address). Restarting it in a loop would only hide that.
_FAST_DEATH_SECONDS = 2.0

_EPILOG = """\
environment:
  WAZZA_WEBHOOK_SECRETS            secret(s) registered with Wazza, comma-separated (required;
                                   each at least 24 bytes, no placeholder such as change-me)
  KAFKA_BOOTSTRAP_SERVERS          host:port[,host:port] (default localhost:9092)
  KAFKA_ENABLE_IDEMPOTENCE         true for Apache Kafka, false for the local broker
  KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_*, KAFKA_SASL_*: TLS and SASL (docs/kafka-security.md)
  WAZZA_SIGNATURE_TOLERANCE_SECONDS, WAZZA_MAX_BODY_BYTES, WAZZA_ALLOWED_IPS,
  WAZZA_TRUSTED_PROXIES, WAZZA_PUBLISH_TIMEOUT_SECONDS, WAZZA_STANDARD_WEBHOOK_SECRETS,
  WAZZA_ALLOW_LEGACY_SIGNATURE, WAZZA_WEBHOOK_PATH, WAZZA_RAW_TOPIC, WAZZA_QUARANTINE_TOPIC:
  see the README.

examples:
  WAZZA_WEBHOOK_SECRETS=$(openssl rand -hex 32) KAFKA_ENABLE_IDEMPOTENCE=false \\
      wazza-ingest --port 8080
      (against the local broker, `wazza-hooks broker`, which refuses idempotent producers)
  wazza-ingest --host 0.0.0.0 --port 8080 --workers 4
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wazza-ingest",
        description="Receive Wazza webhooks: verify, publish to Kafka, answer after the ack.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=port_argument(), default=8080, help="port to bind (default 8080)"
    )
    parser.add_argument(
        "--workers",
        type=whole_number(1, 64, "workers"),
        default=1,
        help="processes sharing the port (default 1)",
    )
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `wazza-ingest`; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        from .settings import IngestSettings

        settings = IngestSettings.from_env()
    except ConfigError as exc:
        print(f"wazza-ingest: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _supervise(args.host, args.port, args.workers)
    return _serve(settings, args.host, args.port, reuse_port=args.reuse_port)


def _serve(settings: IngestSettings, host: str, port: int, *, reuse_port: bool) -> int:
    import asyncio

    import uvloop

    from wazza_hooks.logs import setup_logging

    from .app import build_app

    lines = setup_logging("ingest")
    app = build_app(settings, lines=lines if settings.log_requests else None)
    try:
        # uvloop: the same asyncio API on libuv, its callbacks, timers and socket transports in
        # C. Every request wakes the loop twice (its body, then its ack), and the loop's own
        # Python was a fair share of each (`make bench`: see bench/results/notes-20261206b.md).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_run(app, host, port, reuse_port=reuse_port, lines=lines, settings=settings))
    except OSError as exc:
        print(
            f"wazza-ingest: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    return 0


async def _run(
    app: Any, host: str, port: int, *, reuse_port: bool, lines: Any, settings: IngestSettings
) -> None:
    """Serve until SIGTERM/SIGINT, then stop gracefully.

    The stop closes the listening socket first (no new connections), lets every webhook request
    already being handled finish, bodies still arriving included, then runs aiohttp's own
    shutdown and the cleanup contexts (the producer's flush). aiohttp's shutdown alone would drop
    the rest of a body that is still on its way.
    """
    import asyncio

    from aiohttp import web

    from .app import STATE, direct_dispatch
    from .edges import EdgeLimits, start_runner

    # The port first: one that is taken stops the ingester before the app starts its producer
    # (a producer stopped while it connects can leave a broker connection open behind it).
    socks = _listening_sockets(host, port, reuse_port=reuse_port)
    try:
        runner = await start_runner(
            app, EdgeLimits.of(settings), shutdown_timeout=_SHUTDOWN_TIMEOUT_SECONDS
        )
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    assert runner.server is not None  # noqa: S101 - set by setup()
    # Every connection takes its handler from the server when it opens: none is open yet.
    runner.server.request_handler = direct_dispatch(app)
    try:
        sites = [web.SockSite(runner, sock) for sock in socks]
        for site in sites:
            await site.start()
        # What exists now (modules, the app, the producer) lives as long as the process: kept out
        # of the collector's reach, a full collection under load scans only what came later
        # (measured: one took 46 ms with everything in reach, a pause every in-flight request
        # waited out).
        gc.freeze()
        lines.emit({"ts": round(time.time(), 3), "msg": "listening", "host": host, "port": port})
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        for site in sites:
            await site.stop()
        state = app[STATE]
        deadline = loop.time() + _SHUTDOWN_TIMEOUT_SECONDS
        # A bounded drain, polled 50 times a second.
        while state.in_flight and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        lines.emit({"ts": round(time.time(), 3), "msg": "stopping", "in_flight": state.in_flight})
    finally:
        await runner.cleanup()


def _listening_sockets(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """Sockets bound to every address `host` names, listening, as asyncio's own server makes
    them (SO_REUSEADDR; SO_REUSEPORT for the workers sharing the port; IPv6 ones IPv6 only)."""
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        ):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _supervise(host: str, port: int, workers: int) -> int:
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="wazza-ingest-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    from prometheus_client import multiprocess

    command = [
        sys.executable, "-m", "ingest.server", "--host", host, "--port", str(port), "--reuse-port",
    ]  # fmt: skip
    stopping = False
    procs: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed = False
    try:
        for slot in range(workers):
            if stopping:
                break
            procs[slot] = subprocess.Popen(command)  # noqa: S603 - our own interpreter
            started[slot] = time.monotonic()
        while not stopping:
            time.sleep(0.2)
            for slot, proc in list(procs.items()):
                code = proc.poll()
                if code is None or stopping:
                    continue
                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                if time.monotonic() - started[slot] < _FAST_DEATH_SECONDS:
                    print(
                        f"wazza-ingest: worker exited with {code} right after starting; stopping",
                        file=sys.stderr,
                    )
                    failed = True
                    stop(signal.SIGTERM, None)
                    break
                print(
                    f"wazza-ingest: worker {proc.pid} exited with {code}; restarting",
                    file=sys.stderr,
                )
                procs[slot] = subprocess.Popen(command)  # noqa: S603 - our own interpreter
                started[slot] = time.monotonic()
        codes = []
        for proc in procs.values():
            try:
                codes.append(proc.wait(timeout=_SHUTDOWN_TIMEOUT_SECONDS + 5))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return 1 if failed or any(codes) else 0
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
