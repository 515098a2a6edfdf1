"""What a consumer service is: a name, the event types it takes, and an async handler.

A user adds one by writing a module that defines a `Service` and runs it with
`wazza-consumer package.module:attribute`; it gets dedup, offsets, dead letters, metrics and
graceful shutdown from the runtime.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from wazza_hooks import contract

from .events import JobEvent
from .jobs import apply_job_event, apply_job_events
from .store import Tx

Handler = Callable[[JobEvent, Tx], Awaitable[str | None]]
BatchHandler = Callable[[Sequence[JobEvent], Tx], Awaitable[list[str]]]


class ServiceError(ValueError):
    """A service cannot be loaded or is malformed; the message says which and why."""


@dataclass(frozen=True)
class Service:
    """A consumer service (one consumer group)."""

    name: str
    """Its name: the consumer group is `wazza-<name>`, and history rows carry it."""
    event_types: frozenset[str]
    """The event types it takes; others are skipped by header, without parsing the body."""
    handler: Handler
    """Called once per distinct event, inside the batch transaction; returns the outcome
    (`applied` when it returns None, or `stale`/`conflict`) or raises to be retried and, in the
    end, dead-lettered."""
    schema: tuple[str, ...] = field(default=())
    """Statements run at start (CREATE TABLE IF NOT EXISTS ... for the service's own tables)."""
    batch_handler: BatchHandler | None = None
    """Optional: the whole batch's events at once, with the same effects as `handler` one by
    one (the built-in services use it: a few statements a batch instead of several an event).
    When it raises, the batch falls back to `handler`, event by event, to find the culprit."""
    tracks_jobs: bool = False
    """True for the built-in services that keep the `jobs` table: after each batch, terminal
    events that lost to a later one are marked conflict in the history."""
    event_type_headers: frozenset[bytes] = field(init=False, default=frozenset())
    """`event_types` as their record header values (what the skip test compares)."""

    def __init__(
        self,
        name: str,
        event_types: Iterable[str],
        handler: Handler,
        schema: Iterable[str] = (),
        batch_handler: BatchHandler | None = None,
        tracks_jobs: bool = False,
    ) -> None:
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ServiceError(f"a service name is letters, digits, - and _; got {name!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "event_types", frozenset(event_types))
        object.__setattr__(
            self, "event_type_headers", frozenset(t.encode() for t in self.event_types)
        )
        object.__setattr__(self, "handler", handler)
        object.__setattr__(self, "schema", tuple(schema))
        object.__setattr__(self, "batch_handler", batch_handler)
        object.__setattr__(self, "tracks_jobs", tracks_jobs)
        if not self.event_types:
            raise ServiceError(f"service {name!r} takes no event types")


BUILTIN = {
    name: Service(
        name, [event_type], apply_job_event, batch_handler=apply_job_events, tracks_jobs=True
    )
    for name, event_type in (
        ("completion", contract.JOB_COMPLETED),
        ("failure", contract.JOB_FAILED),
        ("progress", contract.JOB_PROCESSING),
    )
}


def load_service(spec: str) -> Service:
    """A built-in service by name, or a user's `package.module:attribute`."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ServiceError(
            f"unknown service {spec!r}: use completion, failure, progress or package.module:name"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ServiceError(f"cannot import {module_name!r}: {exc}") from exc
    service = getattr(module, attribute, None)
    if not isinstance(service, Service):
        raise ServiceError(f"{spec!r} is not a consumers.Service (got {type(service).__name__})")
    return service
