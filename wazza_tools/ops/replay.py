"""Moving a service back over its history (`wazza-hooks replay`).

A replay only lowers the service's offsets in the store (the source of truth, docs/architecture.md
"Effectively-once consumption"); it never raises one, so it never skips a record. Safe while
the service runs:

- the update is one store transaction, serialised with the service's batches by the same row
  locks (PostgreSQL) or the database lock (SQLite): a batch in flight either commits first (and
  the replay's lower offset overwrites it) or sees the lowered offset in its offset guard,
  writes nothing for that partition and seeks there;
- an idle partition has no batch to notice it: the runtime compares the stored offsets with its
  positions every second and seeks where the store went back (`ConsumerRuntime._reconcile`);
- a stopped service seeks to the stored offsets when it starts, as always.

The records read again meet their history rows, which are the services' dedup keys, so each is
a `duplicate`: no state changes and no history row is added. Only rows pruned after the history
retention (WAZZA_HISTORY_RETENTION_SECONDS) are forgotten, and a pruned row leaves no trace in the
store: `plan_replay` counts the records older than the retention by their broker timestamps (an
upper bound: a service's row is kept at least that long after the record arrived), and the
command refuses to read them again unless told.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from consumers.history import first_offsets_since
from consumers.store import Store
from wazza_tools.ops.connect import known_services, unknown_service


@dataclass(frozen=True, slots=True)
class PartitionMove:
    """One partition of a replay."""

    partition: int
    """The raw topic's partition."""
    stored: int
    """The next offset the store held before the replay."""
    target: int
    """The next offset after it (never above `stored`)."""
    reapplied: int
    """Records in the range older than the history retention: the events among them the service
    took may be forgotten, and would then be applied again."""
    log_start: int = 0
    """The first offset the broker still held when planned (retention deletes below it)."""
    log_end: int | None = None
    """The partition's end when planned; a stored offset past it belongs to another log (the
    topic recreated, a broker that started over). None: not known, no bound."""

    @property
    def records(self) -> int:
        """The records the broker still holds between `target` and `stored`: what will be read
        again. Offsets deleted by retention or past the log's end are not records."""
        end = self.stored if self.log_end is None else min(self.stored, self.log_end)
        return max(0, end - max(self.target, self.log_start))


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What a replay would do for one service."""

    service: str
    """The consumer service (the name in the store and in history rows)."""
    topic: str
    """The raw topic."""
    since_ms: int | None
    """Re-read what the service took at or after this time; None: from the beginning."""
    moves: tuple[PartitionMove, ...]
    """Every partition the store holds an offset for, in partition order."""

    @property
    def records(self) -> int:
        """How many records will be read again (only those the broker still holds)."""
        return sum(m.records for m in self.moves)

    @property
    def reapplied(self) -> int:
        """How many of them are older than the history retention (see `PartitionMove`)."""
        return sum(m.reapplied for m in self.moves)


async def plan_replay(
    store: Store,
    service: str,
    topic: str,
    log_bounds: tuple[dict[int, int], dict[int, int]],
    since_ms: int | None,
    remembered_from: dict[int, int | None],
) -> ReplayPlan:
    """The replay's new offsets; raises OpsError for a service the store has never seen.

    `log_bounds` is each partition's first offset still held and its end (`offset_bounds`);
    `remembered_from` the first offset of each partition received within the history retention
    (`offsets_since`); a partition without one (None, or missing) has every record older.
    From the beginning, each partition goes back to the first offset Kafka still holds. From a
    time, to the first record the service took at or after it, by its own history
    (`consumers.history.first_offsets_since`): that covers every record received after the
    time, and works alike on every broker (Tansu answers offsets_for_times wrongly).
    """
    async with store.reader() as tx:
        rows = await tx.fetchall(
            "SELECT kafka_partition, next_offset FROM consumer_offsets "
            "WHERE service = ? AND topic = ? ORDER BY kafka_partition",
            service,
            topic,
        )
        if not rows:
            raise unknown_service(service, topic, await known_services(tx, topic))
        stored = {int(p): int(o) for p, o in rows}
        firsts: dict[int, int] = {}
        if since_ms is not None:
            firsts = await first_offsets_since(tx, service, topic, since_ms)
        log_starts, log_ends = log_bounds
        moves = []
        for partition, offset in sorted(stored.items()):
            start = log_starts.get(partition, 0)
            end = log_ends.get(partition)
            target = start if since_ms is None else max(start, firsts.get(partition, offset))
            target = min(target, offset)
            # Only the events still in the log are read again: not those of another log past
            # its end (a stored offset beyond the end), nor those retention deleted.
            held_to = offset if end is None else min(offset, end)
            recent = remembered_from.get(partition)
            forgotten_to = held_to if recent is None else min(held_to, recent)
            reapplied = max(0, forgotten_to - max(target, start))
            moves.append(PartitionMove(partition, offset, target, reapplied, start, end))
    return ReplayPlan(service, topic, since_ms, tuple(moves))


async def apply_replay(store: Store, plan: ReplayPlan) -> list[PartitionMove]:
    """Lower the stored offsets in one transaction; the moves made, from the offsets held then.

    Each row is read locked, in partition order as the batches lock them (so the two cannot
    deadlock), and only ever lowered: a batch that committed since the plan is overwritten,
    never a replay undone, and `stored` says where the partition really was.
    """
    done = []
    async with store.transaction() as tx:
        for move in plan.moves:
            row = await tx.fetchone(
                "SELECT next_offset FROM consumer_offsets "  # noqa: S608 - a constant suffix
                f"WHERE service = ? AND topic = ? AND kafka_partition = ?{tx.for_update()}",
                plan.service,
                plan.topic,
                move.partition,
            )
            if row is None or int(row[0]) <= move.target:
                continue
            await tx.execute(
                "UPDATE consumer_offsets SET next_offset = ? "
                "WHERE service = ? AND topic = ? AND kafka_partition = ?",
                move.target,
                plan.service,
                plan.topic,
                move.partition,
            )
            done.append(dataclasses.replace(move, stored=int(row[0])))
    return done
