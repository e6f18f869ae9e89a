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
with :class:`~agentcast.orchestration.engine.WorkflowError`, and its delivery goes back to
the group). Parked events are applied, in arrival order, in the transaction that starts the
instance. When an instance ends its processed ids and parked events are deleted: later
inputs of an ended instance are ignored anyway.

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
from agentcast.orchestration.engine import APPLY, PARK, Engine, Transition, WorkflowError
from agentcast.orchestration.instance import Instance
from agentcast.orchestration.workflow import Workflow
from agentcast.outbox.writer import add as outbox_add
from agentcast.protocol.envelope import Envelope

DEFAULT_MAX_PARKED = 1000

T = TypeVar("T")


@dataclass(slots=True)
class Counts:
    """What a call did: transitions ``applied``, events ``parked``, ``duplicates`` skipped,
    inputs ``ignored``, and outbox rows ``sent``."""

    applied: int = 0
    parked: int = 0
    duplicates: int = 0
    ignored: int = 0
    sent: int = 0

    def add(self, other: Counts) -> None:
        self.applied += other.applied
        self.parked += other.parked
        self.duplicates += other.duplicates
        self.ignored += other.ignored
        self.sent += other.sent


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

    async def _call(self, function: Callable[[], T]) -> T:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self._thread, function)

    async def open(self) -> None:
        await self._call(self.db.open)

    async def close(self) -> None:
        await self._call(self.db.close)
        self._thread.shutdown(wait=False)

    async def process(self, events: Sequence[Envelope]) -> Counts:
        """Apply ``events``, in order, to every instance each selects, in one transaction.

        Raises whatever a handler raises (or :class:`WorkflowError`); then nothing of the
        batch is kept.
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
            rows = self.db.fetchall(sql, *args)
            self.db.rollback()  # end PostgreSQL's implicit transaction
            return rows

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


class _Transaction:
    """One transaction of a store, run in the store's thread.

    Within it the instances it touched are cached (the transaction holds their locks), so
    several events of one instance in a batch read its row once.
    """

    def __init__(self, store: WorkflowStore) -> None:
        self.db = store.db
        self.engine = store.engine
        self.max_parked = store.max_parked
        self.instances: dict[tuple[str, str], Instance | None] = {}

    def process(self, events: Sequence[Envelope]) -> Counts:
        counts = Counts()
        self.db.begin()
        try:
            for event in events:
                targets = self.engine.route(event)
                if not targets:
                    counts.ignored += 1
                for workflow, key in targets:
                    counts.add(self._event(workflow, key, event))
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
            instance = self._instance(due.workflow, due.key)
            if instance is None or instance.schedule().get(due.wakeup) != due.due_us:
                counts.ignored += 1
                self.db.execute(
                    "DELETE FROM {p}agentcast_wf_wakeups WHERE workflow = ? AND key = ?"
                    " AND wakeup = ? AND due_us = ?",
                    due.workflow,
                    due.key,
                    due.wakeup,
                    due.due_us,
                )
            else:
                event = self.engine.wakeup(workflow, instance, due.wakeup)
                decision = self.engine.handle(workflow, instance, event)
                if decision.transition is None:
                    counts.ignored += 1
                else:
                    counts.sent += self._write(decision.transition, instance)
                    counts.applied += 1
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        return counts

    def _instance(self, workflow: str, key: str) -> Instance | None:
        """The instance, locked for this transaction (read once, then cached)."""
        if (workflow, key) not in self.instances:
            self.db.lock(workflow, key)
            self.instances[workflow, key] = _load(self.db, workflow, key)
        return self.instances[workflow, key]

    def _event(self, workflow: Workflow, key: str, event: Envelope) -> Counts:
        counts = Counts()
        db = self.db
        instance = self._instance(workflow.name, key)
        seen = db.fetchall(
            "SELECT 1 FROM {p}agentcast_wf_processed WHERE workflow = ? AND key = ?"
            " AND event_id = ?",
            workflow.name,
            key,
            event.id,
        )
        if seen:
            counts.duplicates += 1
            return counts
        decision = self.engine.handle(workflow, instance, event)
        if decision.kind == PARK:
            self._park(workflow.name, key, event)
            counts.parked += 1
        elif decision.kind == APPLY and decision.transition is not None:
            self._processed(workflow.name, key, event.id)
            counts.sent += self._write(decision.transition, instance)
            counts.applied += 1
            if instance is None:
                counts.add(self._unpark(workflow, decision.transition.instance))
        else:
            counts.ignored += 1
        return counts

    def _processed(self, workflow: str, key: str, event_id: str) -> None:
        self.db.execute(
            "INSERT INTO {p}agentcast_wf_processed (workflow, key, event_id) VALUES (?, ?, ?)",
            workflow,
            key,
            event_id,
        )

    def _park(self, workflow: str, key: str, event: Envelope) -> None:
        rows = self.db.fetchall(
            "SELECT count(*) FROM {p}agentcast_wf_parked WHERE workflow = ? AND key = ?",
            workflow,
            key,
        )
        if int(rows[0][0]) >= self.max_parked:
            raise WorkflowError(
                f"workflow {workflow!r}: {self.max_parked} events already wait for instance"
                f" {key!r} to start"
            )
        self._processed(workflow, key, event.id)
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
        self.db.execute(
            "DELETE FROM {p}agentcast_wf_parked WHERE workflow = ? AND key = ?",
            workflow.name,
            instance.key,
        )
        for _, text in rows:
            event = Envelope.from_dict(orjson.loads(text))
            decision = self.engine.handle(workflow, instance, event)
            if decision.kind == APPLY and decision.transition is not None:
                counts.sent += self._write(decision.transition, instance)
                counts.applied += 1
                instance = decision.transition.instance
            else:
                counts.ignored += 1
        return counts

    def _write(self, transition: Transition, before: Instance | None) -> int:
        db = self.db
        instance = transition.instance
        name, key = instance.workflow, instance.key
        self.instances[name, key] = instance
        state = instance.state.decode()
        meta = instance.meta().decode()
        now_us = time.time_ns() // 1000
        if before is None:
            db.execute(
                "INSERT INTO {p}agentcast_wf_instances (workflow, key, status, step, state,"
                " meta, updated_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                name,
                key,
                instance.status,
                instance.step,
                state,
                meta,
                now_us,
            )
        else:
            db.execute(
                "UPDATE {p}agentcast_wf_instances SET status = ?, step = ?, state = ?, meta = ?,"
                " updated_us = ? WHERE workflow = ? AND key = ?",
                instance.status,
                instance.step,
                state,
                meta,
                now_us,
                name,
                key,
            )
        db.execute(
            "INSERT INTO {p}agentcast_wf_log (workflow, key, step, input, effects, state)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            name,
            key,
            instance.step,
            transition.input.decode(),
            transition.effects.decode(),
            state,
        )
        schedule = instance.schedule()
        if before is None or before.schedule() != schedule:
            db.execute(
                "DELETE FROM {p}agentcast_wf_wakeups WHERE workflow = ? AND key = ?", name, key
            )
            db.executemany(
                "INSERT INTO {p}agentcast_wf_wakeups (workflow, key, wakeup, due_us)"
                " VALUES (?, ?, ?, ?)",
                [(name, key, wakeup, due) for wakeup, due in sorted(schedule.items())],
            )
        for message in transition.outgoing:
            outbox_add(
                db.outbox_conn,
                message.topic,
                message.payload,
                headers=message.headers,
                key=message.key,
                correlation_id=message.correlation_id,
                causation_id=message.causation_id,
                schema=db.schema,
            )
        if not instance.running:
            for table in ("agentcast_wf_processed", "agentcast_wf_parked"):
                db.execute(f"DELETE FROM {{p}}{table} WHERE workflow = ? AND key = ?", name, key)
        return len(transition.outgoing)
