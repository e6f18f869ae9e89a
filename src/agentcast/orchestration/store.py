"""``WorkflowStore``: exactly-once workflow transitions over at-least-once delivery.

Every transition commits in one database transaction with everything it implies:

* the instance record (state and meta), its log entry (input, effects, state after),
  its wake-up rows (timers and expectations), and its outbox rows (the messages its
  intents send), written with :func:`agentcast.outbox.add` on the same connection;
* the input event's id in the processed set of that instance.

So an event delivered again after it committed finds its id and changes nothing (counted as
a duplicate), and a process that dies before the commit leaves nothing behind: the event is
delivered again (its consumer-group delivery was never acked) and applied then. Messages
leave only through the outbox relay, after the commit, at least once, with the outbox's
per-key order (the key is the instance key).

Instances are serialised: on PostgreSQL by an advisory lock per instance, on SQLite by the
database's single writer, so several orchestrators may share one database.

An event that reaches an instance which does not exist yet, and matches only non-start
triggers, is parked (at most ``max_parked`` per instance; past that the event is refused
with :class:`InputFailed`, and its delivery goes back to the group). Parked events are
applied, in arrival order, in the transaction that starts the instance. When an instance
ends its processed ids and parked events are deleted: later inputs of an ended instance are
ignored anyway.

Threads: all database work of a store runs in one dedicated thread (a batch is one
hand-off from the event loop); the async methods may be called from any task, one at a
time is executed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from agentcast.orchestration.db import Db
from agentcast.orchestration.engine import (
    APPLY,
    PARK,
    Decision,
    Engine,
    Transition,
    WorkflowError,
)
from agentcast.orchestration.instance import Instance
from agentcast.orchestration.workflow import Workflow
from agentcast.outbox.writer import OutboxMessage, add_many
from agentcast.protocol.envelope import Envelope

DEFAULT_MAX_PARKED = 1000

T = TypeVar("T")


class InputFailed(Exception):
    """A workflow handler (or the engine's contract checks) refused one input; the cause is
    ``__cause__``. Any other exception out of a store call is the database's."""

    def __init__(self, workflow: str, key: str, event_id: str) -> None:
        super().__init__(f"workflow {workflow!r} instance {key!r} input {event_id!r} failed")
        self.event_id = event_id


@dataclass(slots=True)
class Counts:
    """What a call did: transitions ``applied``, events ``parked``, ``duplicates`` skipped,
    inputs ``ignored``, outbox rows ``sent``, and instances whose wake-ups it
    ``rescheduled``."""

    applied: int = 0
    parked: int = 0
    duplicates: int = 0
    ignored: int = 0
    sent: int = 0
    rescheduled: int = 0

    def add(self, other: Counts) -> None:
        self.applied += other.applied
        self.parked += other.parked
        self.duplicates += other.duplicates
        self.ignored += other.ignored
        self.sent += other.sent
        self.rescheduled += other.rescheduled


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One applied transition of an instance (canonical JSON bytes)."""

    step: int
    input: bytes
    effects: bytes
    state: bytes


@dataclass(frozen=True, slots=True)
class Wakeup:
    """A scheduled wake-up: ``wakeup`` is ``timer:<name>`` or ``expect:<name>``."""

    workflow: str
    key: str
    wakeup: str
    due_us: int


class WorkflowStore:
    """Instances, logs, wake-ups and outbox rows in one database (see the module doc)."""

    def __init__(self, db: Db, engine: Engine, *, max_parked: int = DEFAULT_MAX_PARKED) -> None:
        self.db = db
        self.engine = engine
        self.max_parked = max_parked
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="agentcast-workflows")
        self._lock = asyncio.Lock()
        self._closed = False

    async def _call(self, function: Callable[[], T]) -> T:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self._thread, function)

    async def open(self) -> None:
        await self._call(self.db.open)

    async def close(self) -> None:
        """Close the connection and the store's thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self._call(self.db.close)
        self._thread.shutdown(wait=False)

    async def process(self, events: Sequence[Envelope]) -> Counts:
        """Apply ``events``, in order, to every instance each selects, in one transaction.

        Raises :class:`InputFailed` when a handler raised (or broke the contract:
        :class:`WorkflowError`), and the database's errors; either way nothing of the batch
        is kept.
        """
        return await self._call(lambda: _Transaction(self).process(events))

    async def wake(self, due: Wakeup) -> Counts:
        """Fire one wake-up if it is still scheduled as ``due`` says, in one transaction."""
        return await self._call(lambda: _Transaction(self).wake(due))

    async def instance(self, workflow: str, key: str) -> Instance | None:
        """The instance as last committed, or ``None``."""

        def read() -> Instance | None:
            try:
                return _load(self.db, workflow, key)
            finally:
                self.db.rollback()  # end PostgreSQL's implicit transaction

        return await self._call(read)

    async def instances(self, workflow: str | None = None, limit: int = 100) -> list[Instance]:
        """Up to ``limit`` instances (of ``workflow``), most recently changed first."""
        where, args = ("WHERE workflow = ?", [workflow]) if workflow is not None else ("", [])
        sql = (
            "SELECT workflow, key, state, meta FROM {p}agentcast_wf_instances "
            + where
            + " ORDER BY updated_us DESC LIMIT ?"
        )
        rows = await self.fetchall(sql, *args, limit)
        return [Instance.load(w, k, str(s).encode(), str(m)) for w, k, s, m in rows]

    async def log(self, workflow: str, key: str) -> list[LogEntry]:
        """The instance's transitions in order."""
        rows = await self.fetchall(
            "SELECT step, input, effects, state FROM {p}agentcast_wf_log"
            " WHERE workflow = ? AND key = ? ORDER BY step",
            workflow,
            key,
        )
        return [
            LogEntry(int(step), str(i).encode(), str(e).encode(), str(s).encode())
            for step, i, e, s in rows
        ]

    async def due(self, now_us: int, limit: int = 100) -> list[Wakeup]:
        """Wake-ups due at ``now_us``, earliest first."""
        rows = await self.fetchall(
            "SELECT workflow, key, wakeup, due_us FROM {p}agentcast_wf_wakeups"
            " WHERE due_us <= ? ORDER BY due_us LIMIT ?",
            now_us,
            limit,
        )
        return [Wakeup(str(w), str(k), str(u), int(d)) for w, k, u, d in rows]

    async def next_due_us(self) -> int | None:
        """When the earliest wake-up is due, or ``None`` if none is scheduled."""
        rows = await self.fetchall("SELECT min(due_us) FROM {p}agentcast_wf_wakeups")
        value = rows[0][0] if rows else None
        return None if value is None else int(value)

    async def fetchall(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        """Run one read statement (``?`` placeholders, ``{p}`` table prefix), outside any
        transaction: for inspection."""

        def read() -> list[Sequence[Any]]:
            try:
                return self.db.fetchall(sql, *args)
            finally:
                self.db.rollback()  # end PostgreSQL's implicit transaction

        return await self._call(read)

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one write statement in its own transaction: for maintenance."""

        def write() -> int:
            self.db.begin()
            try:
                count = self.db.execute(sql, *args)
                self.db.commit()
            except BaseException:
                self.db.rollback()
                raise
            return count

        return await self._call(write)


def _load(db: Db, workflow: str, key: str) -> Instance | None:
    rows = db.fetchall(
        "SELECT state, meta FROM {p}agentcast_wf_instances WHERE workflow = ? AND key = ?",
        workflow,
        key,
    )
    if not rows:
        return None
    state, meta = rows[0]
    return Instance.load(workflow, key, str(state).encode(), str(meta))


_UPSERT_INSTANCE = (
    "INSERT INTO {p}agentcast_wf_instances (workflow, key, status, step, state, meta,"
    " updated_us) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow, key) DO UPDATE SET"
    " status = excluded.status, step = excluded.step, state = excluded.state,"
    " meta = excluded.meta, updated_us = excluded.updated_us"
)
_INSERT_PROCESSED = (
    "INSERT INTO {p}agentcast_wf_processed (workflow, key, event_id) VALUES (?, ?, ?)"
)
_INSERT_LOG = (
    "INSERT INTO {p}agentcast_wf_log (workflow, key, step, input, effects, state)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_WAKEUP = (
    "INSERT INTO {p}agentcast_wf_wakeups (workflow, key, wakeup, due_us) VALUES (?, ?, ?, ?)"
)
_DELETE_WAKEUPS = "DELETE FROM {p}agentcast_wf_wakeups WHERE workflow = ? AND key = ?"
_DELETE_PROCESSED = "DELETE FROM {p}agentcast_wf_processed WHERE workflow = ? AND key = ?"
_DELETE_PARKED = "DELETE FROM {p}agentcast_wf_parked WHERE workflow = ? AND key = ?"

Pair = tuple[str, str]


class _Transaction:
    """One transaction of a store, run in the store's thread.

    It locks and reads every instance and processed id the batch needs up front (locks in
    sorted order, so two orchestrators never deadlock), applies the events in memory, and
    writes everything with one batched statement per table at the end.
    """

    def __init__(self, store: WorkflowStore) -> None:
        self.db = store.db
        self.engine = store.engine
        self.max_parked = store.max_parked
        self.instances: dict[Pair, Instance | None] = {}
        self.loaded: dict[Pair, Instance | None] = {}
        self.seen: set[tuple[str, str, str]] = set()
        self.processed: list[tuple[str, str, str]] = []
        self.logs: list[tuple[str, str, int, str, str, str]] = []
        self.outbox: list[OutboxMessage] = []
        self.touched: dict[Pair, Instance] = {}

    def process(self, events: Sequence[Envelope]) -> Counts:
        counts = Counts()
        self.db.begin()
        try:
            targets = []
            for event in events:
                routes = self.engine.route(event)
                if not routes:
                    counts.ignored += 1
                targets += [(workflow, key, event) for workflow, key in routes]
            self._prefetch(
                [(w.name, k) for w, k, _ in targets], [(w.name, k, e.id) for w, k, e in targets]
            )
            for workflow, key, event in targets:
                counts.add(self._event(workflow, key, event))
            counts.rescheduled = self._flush()
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        return counts

    def wake(self, due: Wakeup) -> Counts:
        workflow = self.engine.workflows.get(due.workflow)
        counts = Counts()
        if workflow is None:
            return counts
        self.db.begin()
        try:
            self._prefetch([(due.workflow, due.key)], [])
            instance = self.instances[due.workflow, due.key]
            if instance is None or instance.schedule().get(due.wakeup) != due.due_us:
                counts.ignored += 1
                self.db.execute(
                    _DELETE_WAKEUPS + " AND wakeup = ? AND due_us = ?",
                    due.workflow,
                    due.key,
                    due.wakeup,
                    due.due_us,
                )
            else:
                event = self.engine.wakeup(workflow, instance, due.wakeup)
                decision = self._handle(workflow, instance, event)
                if decision.transition is None:
                    counts.ignored += 1
                else:
                    counts.sent += self._record(decision.transition)
                    counts.applied += 1
            counts.rescheduled = self._flush()
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        return counts

    def _prefetch(self, pairs: list[Pair], ids: list[tuple[str, str, str]]) -> None:
        new = sorted(set(pairs) - self.instances.keys())
        if new:
            self.db.lock_many(new)
            rows = self.db.load_many(new)
            for pair in new:
                row = rows.get(pair)
                instance = None if row is None else Instance.load(*pair, row[0].encode(), row[1])
                self.instances[pair] = self.loaded[pair] = instance
        if ids:
            self.seen |= self.db.processed_many(sorted(set(ids)))

    def _event(self, workflow: Workflow, key: str, event: Envelope) -> Counts:
        counts = Counts()
        ident = (workflow.name, key, event.id)
        if ident in self.seen:
            counts.duplicates += 1
            return counts
        instance = self.instances[workflow.name, key]
        decision = self._handle(workflow, instance, event)
        if decision.kind == PARK:
            self._park(workflow.name, key, event)
            counts.parked += 1
        elif decision.kind == APPLY and decision.transition is not None:
            self._processed(ident)
            counts.sent += self._record(decision.transition)
            counts.applied += 1
            if instance is None:
                counts.add(self._unpark(workflow, decision.transition.instance))
        else:
            counts.ignored += 1
        return counts

    def _handle(self, workflow: Workflow, instance: Instance | None, event: Envelope) -> Decision:
        try:
            return self.engine.handle(workflow, instance, event)
        except Exception as exc:
            key = instance.key if instance is not None else str(workflow.correlate(event))
            raise InputFailed(workflow.name, key, event.id) from exc

    def _processed(self, ident: tuple[str, str, str]) -> None:
        self.seen.add(ident)
        self.processed.append(ident)

    def _park(self, workflow: str, key: str, event: Envelope) -> None:
        rows = self.db.fetchall(
            "SELECT count(*) FROM {p}agentcast_wf_parked WHERE workflow = ? AND key = ?",
            workflow,
            key,
        )
        if int(rows[0][0]) >= self.max_parked:
            raise InputFailed(workflow, key, event.id) from WorkflowError(
                f"workflow {workflow!r}: {self.max_parked} events already wait for instance"
                f" {key!r} to start"
            )
        self._processed((workflow, key, event.id))
        self.db.execute(
            "INSERT INTO {p}agentcast_wf_parked (workflow, key, event) VALUES (?, ?, ?)",
            workflow,
            key,
            orjson.dumps(event.to_dict()).decode(),
        )

    def _unpark(self, workflow: Workflow, instance: Instance) -> Counts:
        counts = Counts()
        rows = self.db.fetchall(
            "SELECT id, event FROM {p}agentcast_wf_parked WHERE workflow = ? AND key = ?"
            " ORDER BY id",
            workflow.name,
            instance.key,
        )
        if not rows:
            return counts
        self.db.execute(_DELETE_PARKED, workflow.name, instance.key)
        for _, text in rows:
            event = Envelope.from_dict(orjson.loads(text))
            decision = self._handle(workflow, instance, event)
            if decision.kind == APPLY and decision.transition is not None:
                counts.sent += self._record(decision.transition)
                counts.applied += 1
                instance = decision.transition.instance
            else:
                counts.ignored += 1
        return counts

    def _record(self, transition: Transition) -> int:
        """Keep the transition's writes for :meth:`_flush`; the number of messages."""
        instance = transition.instance
        pair = (instance.workflow, instance.key)
        self.instances[pair] = self.touched[pair] = instance
        self.logs.append(
            (
                *pair,
                instance.step,
                transition.input.decode(),
                transition.effects.decode(),
                instance.state.decode(),
            )
        )
        self.outbox += [
            OutboxMessage(m.topic, m.payload, m.headers, m.key, m.correlation_id, m.causation_id)
            for m in transition.outgoing
        ]
        return len(transition.outgoing)

    def _flush(self) -> int:
        """Write what the transaction recorded; the number of instances rescheduled."""
        db = self.db
        now_us = time.time_ns() // 1000
        db.executemany(_INSERT_PROCESSED, self.processed)
        db.executemany(
            _UPSERT_INSTANCE,
            [
                (w, k, i.status, i.step, i.state.decode(), i.meta().decode(), now_us)
                for (w, k), i in self.touched.items()
            ],
        )
        db.executemany(_INSERT_LOG, self.logs)
        changed = {
            pair: instance.schedule()
            for pair, instance in self.touched.items()
            if _schedule(self.loaded.get(pair)) != instance.schedule()
        }
        db.executemany(_DELETE_WAKEUPS, list(changed))
        db.executemany(
            _INSERT_WAKEUP,
            [
                (w, k, u, due)
                for (w, k), wakeups in changed.items()
                for u, due in sorted(wakeups.items())
            ],
        )
        # Sorted by key (stably: each key's messages keep their order), so the outbox's
        # per-key locks are taken in one order by every transaction, like the instance locks.
        add_many(db.outbox_conn, sorted(self.outbox, key=_by_key), schema=db.schema)
        ended = [pair for pair, instance in self.touched.items() if not instance.running]
        db.executemany(_DELETE_PROCESSED, ended)
        db.executemany(_DELETE_PARKED, ended)
        return len(changed)


def _by_key(message: OutboxMessage) -> str:
    return message.key or ""


def _schedule(instance: Instance | None) -> dict[str, int]:
    return {} if instance is None else instance.schedule()
