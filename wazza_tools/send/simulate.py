"""`simulate`'s engine: deliver a plan the way Wazza delivers webhooks, and count what happened.

- A window of jobs is active at once, taken round robin; a job's deliveries go out one after the
  other (the next once the previous got its first answer), as a sender reporting one generation
  does, so that only planned reordering and retries change a job's order.
- Each attempt is signed afresh (`X-Wazza-Timestamp` = now). A non-2xx or no answer within 5 s is
  retried with exponential backoff and full jitter, up to 5 attempts in all, then given up and
  reported. Retries run beside the job's later deliveries, as a real sender's retry queue does.
- Answers no retry can change (401 wrong secret or clock, 403 address refused, 404/405 wrong URL)
  stop the whole run at once with the reason: thousands of doomed retries would only hide it.
- At most `concurrency` requests are in flight (one HTTP connection each, kept alive), and with
  `rate` at most that many attempts start per second.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlsplit

import aiohttp

from wazza_hooks.config import plural
from wazza_tools.send import webhooks as sender
from wazza_tools.send.plan import JobPlan

# The spec: "After 5 failed attempts, the webhook is marked as failed".
ATTEMPTS = 5
# The spec documents exponential backoff but not its schedule; these compress it to seconds
# (1, 2, 4, 8 s before attempts 2-5, each with full jitter) so that a run ends in minutes.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0
# Jobs in progress at once per connection: enough that a job's next event rarely waits for its
# previous one, few enough that jobs finish all along the run, not all at its end.
WINDOW_PER_CONNECTION = 4
# How often the progress line is redrawn on a terminal, and written when it is not one.
TTY_REFRESH_SECONDS = 0.2
LOG_REFRESH_SECONDS = 5.0


class Aborted(sender.SenderError):
    """The endpoint gave an answer no retry can change; the run stopped."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How to deliver."""

    url: str
    """Where to POST."""
    secret: bytes
    """The HMAC key."""
    concurrency: int = 32
    """Requests in flight at most."""
    rate: float | None = None
    """Attempts started per second at most (None: as fast as answers come)."""
    attempts: int = ATTEMPTS
    """Attempts per delivery before it is given up."""
    timeout_seconds: float = sender.ANSWER_TIMEOUT_SECONDS
    """An answer later than this is none: the attempt failed."""
    backoff_seconds: float = BACKOFF_BASE_SECONDS
    """Delay before the second attempt; doubled for each next one, capped, with full jitter."""
    seed: int = 0
    """Seed of the jitter."""


@dataclass(frozen=True, slots=True)
class GivenUp:
    """A delivery that failed every attempt."""

    job_id: str
    """Its job."""
    index: int
    """The event's index in the job."""
    event_type: str
    """The event's type."""
    last: str
    """The last attempt's answer (`HTTP 503`, `no answer (timeout)`)."""
    attempts: int
    """How many attempts were made."""
    maybe_landed: bool
    """True when an attempt may have been published all the same (a 5xx or no answer)."""


@dataclass
class Tally:
    """What a run did, counted as it went."""

    planned: int = 0
    """Deliveries in the plan (duplicates included)."""
    sent: int = 0
    """Deliveries attempted at least once."""
    attempts: int = 0
    """HTTP attempts in all."""
    accepted: int = 0
    """Deliveries answered 2xx (published by the ingester)."""
    quarantined: int = 0
    """Deliveries answered 202 with `quarantined` (kept aside by the ingester, not applied)."""
    retried: int = 0
    """Attempts after a failed one."""
    given_up: list[GivenUp] = field(default_factory=list)
    """Deliveries that failed every attempt."""
    statuses: Counter[str] = field(default_factory=Counter)
    """Answers by status (`200`, `503`, `timeout`, ...)."""
    latencies: list[float] = field(default_factory=list)
    """Seconds of every attempt, answered or not."""
    started: float = 0.0
    """perf_counter() at the start."""
    ended: float = 0.0
    """perf_counter() at the end."""
    landed: dict[str, set[int]] = field(default_factory=dict)
    """Per job: the events certainly published."""

    @property
    def seconds(self) -> float:
        """The run's duration."""
        return max((self.ended or time.perf_counter()) - self.started, 1e-9)

    def percentile(self, q: float) -> float | None:
        """The q-quantile of attempt latencies in seconds (nearest rank), None before any."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    def in_doubt(self) -> dict[str, dict[int, str]]:
        """Per job: events whose every delivery was given up but may have landed, and why."""
        out: dict[str, dict[int, str]] = {}
        for g in self.given_up:
            if g.maybe_landed and g.index not in self.landed.get(g.job_id, ()):
                why = f"given up after {plural(g.attempts, 'attempt')} (last: {g.last})"
                out.setdefault(g.job_id, {})[g.index] = why
        return out


class Pacer:
    """At most `rate` starts per second, shared by every task (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


class ProgressLine:
    """One line on stderr: redrawn in place on a terminal, else written every few seconds."""

    def __init__(self, tally: Tally, stream: TextIO | None = None) -> None:
        self._tally = tally
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()

    def text(self) -> str:
        t = self._tally
        done = t.accepted + t.quarantined + len(t.given_up)
        share = done / t.planned if t.planned else 1.0
        width = 24
        filled = int(share * width)
        bar = "#" * filled + "." * (width - filled)
        return (
            f"simulate [{bar}] {share:4.0%} {done}/{t.planned} webhooks  "
            f"{t.attempts / t.seconds:,.0f} req/s  retried {t.retried}  "
            f"given up {len(t.given_up)}"
        )

    async def run(self) -> None:
        every = TTY_REFRESH_SECONDS if self._tty else LOG_REFRESH_SECONDS
        while True:
            await asyncio.sleep(every)
            self.draw()

    def draw(self) -> None:
        if self._tty:
            self._stream.write("\r" + self.text() + "\033[K")
        else:
            self._stream.write(self.text() + "\n")
        self._stream.flush()

    def finish(self) -> None:
        self.draw()
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


async def reachable(url: str, within_seconds: float) -> None:
    """Raise SenderError unless something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within_seconds)
    except TimeoutError:
        raise sender.SenderError(
            f"cannot reach {url}: no answer within {within_seconds:g} s"
        ) from None
    except ConnectionRefusedError:
        raise sender.SenderError(
            f"cannot reach {url}: connection refused (is the stack running? `make run` starts it)"
        ) from None
    except OSError as exc:
        raise sender.SenderError(f"cannot reach {url}: {exc.strerror or exc}") from None
    writer.close()
    await writer.wait_closed()


class Simulation:
    """One run: `await run(plans)` delivers them and fills `tally`."""

    def __init__(self, options: RunOptions, on_start: Callable[[Tally], None] | None = None):
        self.options = options
        self.tally = Tally()
        self._pacer = Pacer(options.rate)
        self._slots = asyncio.Semaphore(options.concurrency)
        self._jitter = random.Random(options.seed)  # noqa: S311 - jitter, not a secret
        self._timeout = aiohttp.ClientTimeout(total=options.timeout_seconds)
        self._on_start = on_start

    async def run(self, plans: list[JobPlan]) -> Tally:
        """Deliver every plan; raises Aborted on an answer no retry can change."""
        tally = self.tally
        tally.planned = sum(len(p.order) for p in plans)
        tally.landed = {p.job_id: set() for p in plans}
        tally.started = time.perf_counter()
        if self._on_start is not None:
            self._on_start(tally)
        pending = deque(plans)
        active: deque[tuple[JobPlan, int]] = deque()
        window = max(16, WINDOW_PER_CONNECTION * self.options.concurrency)
        connector = aiohttp.TCPConnector(limit=self.options.concurrency)
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                asyncio.TaskGroup() as group,
            ):

                async def worker() -> None:
                    while True:
                        while len(active) < window and pending:
                            active.append((pending.popleft(), 0))
                        if not active:
                            return
                        plan, position = active.popleft()
                        await self._first_attempt(session, group, plan, plan.order[position])
                        if position + 1 < len(plan.order):
                            active.append((plan, position + 1))

                for _ in range(self.options.concurrency):
                    group.create_task(worker())
        except* Aborted as caught:
            raise caught.exceptions[0] from None
        finally:
            tally.ended = time.perf_counter()
        return tally

    async def _attempt(
        self, session: aiohttp.ClientSession, plan: JobPlan, index: int
    ) -> sender.Answer:
        await self._pacer.wait()
        async with self._slots:
            answer = await sender.post(
                session, self.options.url, self.options.secret, plan.events[index].body,
                self._timeout,
            )  # fmt: skip
        tally = self.tally
        tally.attempts += 1
        tally.latencies.append(answer.seconds)
        tally.statuses[
            str(answer.status) if answer.status is not None else answer.problem or ""
        ] += 1
        hint = sender.refusal_hint(answer)
        if hint is not None:
            raise Aborted(f"{hint}; stopped after {plural(tally.attempts, 'attempt')}")
        if answer.ok:
            if answer.quarantined():
                tally.quarantined += 1
            else:
                tally.accepted += 1
                tally.landed[plan.job_id].add(index)
        return answer

    async def _first_attempt(
        self,
        session: aiohttp.ClientSession,
        group: asyncio.TaskGroup,
        plan: JobPlan,
        index: int,
    ) -> None:
        self.tally.sent += 1
        answer = await self._attempt(session, plan, index)
        if not answer.ok:
            group.create_task(self._retry(session, plan, index, answer))

    async def _retry(
        self, session: aiohttp.ClientSession, plan: JobPlan, index: int, last: sender.Answer
    ) -> None:
        maybe = _maybe_published(last)
        for attempt in range(2, self.options.attempts + 1):
            delay = min(BACKOFF_CAP_SECONDS, self.options.backoff_seconds * 2 ** (attempt - 2))
            await asyncio.sleep(self._jitter.uniform(0, delay))
            self.tally.retried += 1
            last = await self._attempt(session, plan, index)
            if last.ok:
                return
            maybe = maybe or _maybe_published(last)
        event = plan.events[index]
        self.tally.given_up.append(
            GivenUp(
                plan.job_id,
                index,
                event.event_type,
                sender.describe(last),
                self.options.attempts,
                maybe,
            )
        )


def _maybe_published(answer: sender.Answer) -> bool:
    """A 5xx, a timeout or a reset can hide a late broker ack; a 4xx or a refused connection
    cannot."""
    if answer.status is None:
        return answer.problem != "connection refused"
    return answer.status >= 500
