"""What `simulate` sends, decided up front and reproducibly: a pure function of the options.

Per job: a few `job.processing` events with rising percent, then `job.completed` or `job.failed`,
each event one distinct body (its own `timestamp` and progress), hence one distinct event id
(the ingester's id for Wazza-signed requests is the body's SHA-256, `contract.body_event_id`).

Then, per job, the order its deliveries are sent in:
- `reorder`: the share of jobs whose order is disturbed the way sender retries disturb it: the
  last progress event sent after the terminal one (it must end up `stale`), or two neighbouring
  progress events swapped (the lower percent arrives second: `stale` too).
- `duplicates`: the share of events delivered twice: the same body again, later in the job's
  order (the second copy is re-signed when sent, so only the signature headers differ).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from wazza_tools.send import webhooks as sender

# Progress events per job: a few, as a 5-15 minute generation reports them; 3-7 averages 5,
# so a job is about 6 webhooks (10,000 jobs ~ 60,000 webhooks).
MIN_PROGRESS_EVENTS = 3
MAX_PROGRESS_EVENTS = 7
# Seconds between two events of a job (its event times, not when they are sent).
EVENT_SPACING_SECONDS = 10
# Event times lie in the last SPREAD seconds before the plan is made: fresh but in the past,
# and spread so that jobs did not all start in the same second.
START_SPREAD_SECONDS = 600

_FAILURES = (
    ("CONTENT_POLICY_VIOLATION", "Content violates safety policy"),
    ("PROVIDER_TIMEOUT", "The provider did not finish the job in time"),
    ("INVALID_PROMPT", "The prompt could not be processed"),
)
_MODELS = (("openai", "sora-2-pro"), ("openai", "sora-2"), ("google", "veo-3"))
_SIZES = ((1920, 1080), (1280, 720), (1080, 1920))


@dataclass(frozen=True, slots=True)
class PlanOptions:
    """The knobs of a simulated run."""

    jobs: int
    """How many jobs."""
    failures: float = 0.2
    """Share of jobs that end in `job.failed` (the rest `job.completed`)."""
    duplicates: float = 0.0
    """Share of events delivered a second time."""
    reorder: float = 0.0
    """Share of jobs whose deliveries are sent out of order."""
    seed: int = 0
    """Seed of every random choice: the same seed and clock give the same plan."""


@dataclass(frozen=True, slots=True)
class Event:
    """One distinct event of a job."""

    job_id: str
    """The job it belongs to."""
    index: int
    """Its place in the job's own sequence (0 = first progress event; the last is terminal)."""
    event_type: str
    """`job.processing`, `job.completed` or `job.failed`."""
    body: bytes
    """The exact bytes sent (and hashed into the event id by the ingester)."""


@dataclass(frozen=True, slots=True)
class JobPlan:
    """One job: its events in their own order, and the order its deliveries are sent in."""

    job_id: str
    """The job's id."""
    events: tuple[Event, ...]
    """Progress events by rising percent, then the terminal event."""
    order: tuple[int, ...]
    """Indexes into `events`, in sending order; an index twice is a duplicate delivery."""
    reordered: bool
    """True when `order` is not the events' own order (duplicates aside)."""

    @property
    def terminal(self) -> Event:
        """The job's terminal event."""
        return self.events[-1]


def make_plan(options: PlanOptions, now: float) -> list[JobPlan]:
    """Every job's events and delivery order; event times lie before `now`."""
    for name in ("failures", "duplicates", "reorder"):
        value = getattr(options, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    run = f"{_random(options.seed, 'run').getrandbits(32):08x}"
    width = max(6, len(str(options.jobs - 1)))
    return [_job(options, j, f"job_sim{run}_{j:0{width}d}", now) for j in range(options.jobs)]


def _random(seed: int, *parts: object) -> random.Random:
    # One generator per job and purpose: a job's events do not change with the delivery options,
    # so a run with duplicates and reordering carries the same events as one without.
    return random.Random(":".join(map(str, (seed, *parts))))  # noqa: S311 - not a secret


def _job(options: PlanOptions, j: int, job_id: str, now: float) -> JobPlan:
    rnd = _random(options.seed, "job", j)
    count = rnd.randint(MIN_PROGRESS_EVENTS, MAX_PROGRESS_EVENTS)
    at = now - START_SPREAD_SECONDS + rnd.randrange(START_SPREAD_SECONDS // 2)
    docs = []
    for k, percent in enumerate(sorted(rnd.sample(range(1, 100), count))):
        eta = round(300 * (100 - percent) / 100)
        docs.append(
            sender.processing_event(
                job_id, percent, _stage(percent), eta, at + k * EVENT_SPACING_SECONDS
            )
        )
    end = at + count * EVENT_SPACING_SECONDS
    if rnd.random() < options.failures:
        code, message = rnd.choice(_FAILURES)
        docs.append(sender.failed_event(job_id, code, message, end))
    else:
        provider, model = rnd.choice(_MODELS)
        width, height = rnd.choice(_SIZES)
        output = {
            "url": f"https://cdn.wazza.ai/outputs/{job_id}.mp4",
            "width": width,
            "height": height,
            "duration": rnd.choice((5, 10, 15)),
            "format": "mp4",
        }
        metadata = {"provider": provider, "model": model, "creditsUsed": rnd.randint(5, 30)}
        docs.append(sender.completed_event(job_id, output, metadata, end))
    events = tuple(
        Event(job_id, i, str(doc["event"]), sender.encode(doc)) for i, doc in enumerate(docs)
    )
    rnd = _random(options.seed, "order", j)
    order = list(range(len(events)))
    reordered = rnd.random() < options.reorder
    if reordered:
        if rnd.random() < 0.5:
            # The last progress event after the terminal one.
            order[-2], order[-1] = order[-1], order[-2]
        else:
            i = rnd.randrange(count - 1)
            order[i], order[i + 1] = order[i + 1], order[i]
    for index in range(len(events)):
        if rnd.random() < options.duplicates:
            # Again, somewhere after its first delivery (possibly after the terminal event).
            first = order.index(index)
            order.insert(rnd.randint(first + 1, len(order)), index)
    return JobPlan(job_id, events, tuple(order), reordered)


def _stage(percent: int) -> str:
    if percent < 25:
        return "preparing"
    if percent < 85:
        return "rendering"
    return "encoding"
