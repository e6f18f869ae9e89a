"""The hub: connection registry, subscriptions, and encode-once fan-out.

Contract:

* :meth:`Hub.publish` assigns the event its position, encodes it **once** into a complete
  WebSocket frame, and hands that frame to the outbound queue of every matching connection
  (at most once per connection). It never waits on a connection: a full queue applies the
  subscription's slow-consumer policy right there.
* Queued frames are written by :meth:`Hub.flush_dirty`, scheduled once per event-loop
  iteration through ``call_soon``; each connection's pending frames leave in one transport
  write.
* Per-topic order: events of a topic are queued in ``seq`` order on every connection and the
  writer never reorders; a drop policy may remove events but never swap them.
* Durable topics (a :class:`DurableRule` matches) go through :meth:`Hub.publish_durable`
  (a future) or :meth:`Hub.submit_durable` (a callback, the WebSocket path): the history
  store assigns the position inside its commit, the event is fanned out after the commit,
  and the publisher is told after that (acked = stored). WebSocket acks of one commit batch
  leave as one control entry per connection (:meth:`Hub.queue_ack`).
* :attr:`Hub.observer`, when set, is called once per publication (ephemeral or durable, not
  for a duplicate) with the topic and the encoded envelope, right before the fan-out. It runs
  on the hot path: it must be cheap and must not raise. Unset (the default) it costs one
  attribute check per publication.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from itertools import count
from typing import Any

import orjson

from agentcast.errors import NotSubscribed, PayloadTooLarge, TooManySubscriptions
from agentcast.hub.cluster import ClusterLink
from agentcast.hub.config import HubConfig
from agentcast.hub.connection import Connection, Sink, Subscription
from agentcast.hub.consumer_groups import GroupManager
from agentcast.hub.dedupe import DedupeWindow
from agentcast.hub.durability import DurabilityRules
from agentcast.hub.durable_log import DurableLog, OnDone
from agentcast.hub.outbound import Entry, OutboundQueue, PushOutcome
from agentcast.hub.sequencer import LamportClock, MemorySequencer
from agentcast.hub.stats import HubStats
from agentcast.hub.topic_index import TopicIndex
from agentcast.protocol.codes import CloseCode
from agentcast.protocol.commands import Policy, Publish
from agentcast.protocol.envelope import encode_envelope, new_event_id, rfc3339_now
from agentcast.protocol.frames import event_message, ws_text_frame
from agentcast.protocol.topics import tenant_of
from agentcast.security.guard import ConnectionAuth, Security
from agentcast.storage.base import AppendResult, EventDraft, HistoryStore, StoredEvent
from agentcast.storage.consumers import ConsumerStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PublishResult:
    """Where a publication landed; ``duplicate`` means an idempotency key matched.

    Built once per publish, so not frozen (cheaper to construct); treat it as immutable."""

    id: str
    topic: str
    seq: int
    epoch: str
    lamport: int
    duplicate: bool = False

    @classmethod
    def from_append(cls, appended: AppendResult) -> PublishResult:
        """The position a durable publish got from the history store."""
        event = appended.event
        return cls(event.id, event.topic, event.seq, event.epoch, event.lamport, appended.duplicate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "seq": self.seq,
            "epoch": self.epoch,
            "lamport": self.lamport,
            "duplicate": self.duplicate,
        }


class Hub:
    """Single-node fan-out. All methods run on one event loop thread."""

    def __init__(
        self,
        config: HubConfig,
        call_soon: Callable[[Callable[[], None]], object],
        *,
        node_id: str = "node",
        clock: Callable[[], float] = time.monotonic,
        security: Security | None = None,
    ) -> None:
        self.config = config
        self.security = security or Security()
        self.node_id = node_id
        self.clock = clock
        self.stats = HubStats()
        self.connections: dict[str, Connection] = {}
        self.index: TopicIndex[Subscription] = TopicIndex()
        self.sequencer = MemorySequencer(config.max_topics)
        self.lamport = LamportClock()
        self.dedupe: DedupeWindow[PublishResult] = DedupeWindow(
            config.dedupe_window, config.max_dedupe_keys, clock
        )
        self.durability = DurabilityRules()
        self.history: HistoryStore | None = None
        self.durable_log: DurableLog | None = None
        self.groups: GroupManager | None = None
        self.observer: Callable[[str, bytes], None] | None = None
        self.cluster: ClusterLink | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._call_soon = call_soon
        self._ids = count(1)
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._acks: dict[Connection, list[bytes]] = {}

    def enable_durability(
        self, rules: DurabilityRules, history: HistoryStore, consumers: ConsumerStore
    ) -> DurableLog:
        """Make topics matching ``rules`` durable in ``history`` (consumer groups keep their
        progress in ``consumers``); returns the commit log whose :meth:`DurableLog.run` the
        caller must run in a task."""
        self.durability = rules
        self.history = history
        self.durable_log = DurableLog(history, self._fan_out_stored, on_batch_done=self._send_acks)
        self.groups = GroupManager(self, consumers)
        return self.durable_log

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the hub owns (cancelled by :meth:`cancel_tasks`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task failed", exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        """Cancel and await every task the hub spawned."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- connections -------------------------------------------------------------------

    def connect(self, sink: Sink, auth: ConnectionAuth | None = None) -> Connection:
        """Register a new connection writing to ``sink``; ``auth`` comes from the transport's
        upgrade checks (in-process callers may leave it out)."""
        conn_id = f"{self.node_id}-{next(self._ids)}"
        queue = OutboundQueue(self.config.max_queue_messages, self.config.max_queue_bytes)
        conn = Connection(
            self, conn_id, sink, queue, self.clock(), auth or self.security.connection()
        )
        self.connections[conn_id] = conn
        self.stats.connections_opened += 1
        return conn

    def disconnected(self, conn: Connection) -> None:
        """The transport lost ``conn``: forget it and its subscriptions (idempotent)."""
        if self.connections.pop(conn.id, None) is None:
            return
        conn.closed = True
        conn.queue.clear()
        conn.auth.release()
        for sub in conn.subscriptions.values():
            self.index.remove(sub)
            if self.cluster is not None:
                self.cluster.interest_down(sub.pattern)
        conn.subscriptions.clear()
        self.stats.connections_closed += 1
        callbacks, conn.drained = conn.drained, []
        for callback in callbacks:
            callback()
        if conn.groups and self.groups is not None:
            for key in list(conn.groups):
                self.groups.leave(conn, key)

    def close(self, conn: Connection, code: CloseCode, reason: str, *, flush: bool) -> None:
        """Close ``conn`` with ``code``; with ``flush`` its queued frames are written first."""
        if conn.closed:
            return
        if flush:
            conn.paused = False
            conn.flush(self.clock())
        conn.closed = True
        conn.queue.clear()
        conn.sink.close(int(code), reason)
        self.disconnected(conn)

    def close_all(self, code: CloseCode, reason: str) -> None:
        """Close every connection (graceful shutdown), flushing what each has queued."""
        for conn in list(self.connections.values()):
            self.close(conn, code, reason, flush=True)

    def set_paused(self, conn: Connection, paused: bool) -> None:
        """The transport's write buffer crossed its high (True) or low (False) mark."""
        conn.paused = paused
        if not paused and len(conn.queue):
            self.mark_dirty(conn)

    def sweep(self, now: float) -> None:
        """Heartbeats and idle timeouts; call every second or so.

        A connection silent for ``heartbeat_interval`` gets a WebSocket ping (at most one per
        interval); one silent for ``idle_timeout`` (no frame at all, pongs included) is closed
        with 4002.
        """
        idle_timeout = self.config.idle_timeout
        heartbeat = self.config.heartbeat_interval
        if self.groups is not None:
            self.groups.sweep(now)
        wall = self.security.wall_clock() if self.security.enabled else 0.0
        for conn in list(self.connections.values()):
            if now - conn.last_recv > idle_timeout:
                self.close(conn, CloseCode.IDLE_TIMEOUT, "idle timeout", flush=False)
            elif wall and conn.auth.expired(wall):
                self.close(conn, CloseCode.TOKEN_EXPIRED, "token expired", flush=True)
            elif now - max(conn.last_recv, conn.last_ping) >= heartbeat:
                # A client that only listens proves liveness with its pong.
                conn.last_ping = now
                conn.sink.ping()

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(
        self, conn: Connection, pattern: str, policy: Policy | None, key_header: str
    ) -> Subscription:
        """Add or replace ``conn``'s subscription to ``pattern`` (validated by the caller)."""
        existing = conn.subscriptions.get(pattern)
        if existing is None and len(conn.subscriptions) >= self.config.max_subscriptions:
            raise TooManySubscriptions(
                f"a connection holds at most {self.config.max_subscriptions} subscriptions"
            )
        if existing is not None:
            self.index.remove(existing)
            if conn.recovering.get(pattern) is existing:
                del conn.recovering[pattern]
        order = existing.order if existing is not None else conn.next_order
        conn.next_order += existing is None
        sub = Subscription(conn, pattern, policy or self.config.default_policy, key_header, order)
        conn.subscriptions[pattern] = sub
        self.index.add(sub)
        if existing is None and self.cluster is not None:
            self.cluster.interest_up(pattern)
        return sub

    def unsubscribe(self, conn: Connection, pattern: str) -> None:
        """Remove ``conn``'s subscription to ``pattern`` or raise :class:`NotSubscribed`."""
        sub = conn.subscriptions.pop(pattern, None)
        if sub is None:
            raise NotSubscribed(f"not subscribed to {pattern!r}")
        self.index.remove(sub)
        if conn.recovering.get(pattern) is sub:
            del conn.recovering[pattern]
        if self.cluster is not None:
            self.cluster.interest_down(pattern)

    # -- publishing --------------------------------------------------------------------

    def _encode_payload(self, cmd: Publish) -> bytes:
        payload = orjson.dumps(cmd.payload)
        if len(payload) > self.config.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload is {len(payload)} bytes; the limit is {self.config.max_payload_bytes}"
            )
        return payload

    def publish_any(
        self, cmd: Publish, source: str
    ) -> PublishResult | asyncio.Future[AppendResult]:
        """Publish to an ephemeral topic (result now) or a durable one (a future; turn its
        result into a reply with :meth:`PublishResult.from_append`)."""
        if self.durability and self.durability.rule_for(cmd.topic) is not None:
            return self.publish_durable(cmd, source)
        return self.publish(cmd, source)

    def is_durable(self, topic: str) -> bool:
        """Whether publishes to exact ``topic`` go through the durable log."""
        durability = self.durability
        return bool(durability) and durability.rule_for(topic) is not None

    def publish_durable(self, cmd: Publish, source: str) -> asyncio.Future[AppendResult]:
        """Submit a durable publish; the future resolves once the store has committed it
        (and it was fanned out), or fails with ``unavailable``; ``overloaded`` is raised
        at once when too many publishes wait.

        Raises :class:`PayloadTooLarge` (nothing submitted) if the payload is too big.
        """
        assert self.durable_log is not None, "durability is not enabled"
        return self.durable_log.submit(self._draft(cmd, source))

    def submit_durable(self, cmd: Publish, source: str, on_done: OnDone) -> None:
        """:meth:`publish_durable` reporting to ``on_done`` instead of a future."""
        assert self.durable_log is not None, "durability is not enabled"
        self.durable_log.submit_callback(self._draft(cmd, source), on_done)

    def _draft(self, cmd: Publish, source: str) -> EventDraft:
        """The draft of a durable publish; raises :class:`PayloadTooLarge` if too big."""
        payload = self._encode_payload(cmd)
        key = cmd.idempotency_key
        if key is not None:
            key = f"{tenant_of(cmd.topic)}/{key}"
        return EventDraft(
            new_event_id(),
            cmd.topic,
            rfc3339_now(),
            source,
            payload,
            cmd.headers,
            cmd.correlation_id,
            cmd.causation_id,
            self.lamport.tick(cmd.lamport),
            key,
        )

    def queue_ack(self, conn: Connection, frame: bytes) -> None:
        """Queue the reply ``frame`` of a durable publish of ``conn`` that the current commit
        batch acknowledged; the batch's acks leave as one control entry per connection, right
        after the batch (from the durable log's ``on_batch_done``), in the order queued."""
        frames = self._acks.get(conn)
        if frames is None:
            self._acks[conn] = [frame]
        else:
            frames.append(frame)

    def _send_acks(self) -> None:
        acks, self._acks = self._acks, {}
        for conn, frames in acks.items():
            conn.send_control(frames[0] if len(frames) == 1 else b"".join(frames))

    def _fan_out_stored(self, event: StoredEvent) -> None:
        self.stats.publishes += 1
        envelope = event.envelope_json()
        if self.cluster is not None:
            self.cluster.committed(event.topic, event.seq, envelope, event.headers)
        else:
            self.deliver_envelope(event.topic, envelope, event.headers, event.seq, durable=True)

    def deliver_envelope(
        self, topic: str, envelope: bytes, headers: dict[str, str], seq: int, *, durable: bool
    ) -> None:
        """Fan out an encoded envelope to this node's subscribers (and wake the topic's
        consumer groups if it is durable). Local publishes and the cluster link use it."""
        if self.observer is not None:
            self.observer(topic, envelope)
        self._fan_out(topic, envelope, headers, seq, durable)
        if durable and self.groups is not None:
            self.groups.appended(topic, seq)

    def publish(self, cmd: Publish, source: str) -> PublishResult:
        """Sequence, encode once and fan out one ephemeral event; see the module contract.

        Raises :class:`PayloadTooLarge` before anything is assigned if the payload is too big.
        """
        dedupe_key = None
        if cmd.idempotency_key is not None:
            dedupe_key = f"{tenant_of(cmd.topic)}/{cmd.idempotency_key}"
            seen = self.dedupe.get(dedupe_key)
            if seen is not None:
                self.stats.duplicates += 1
                return PublishResult(
                    seen.id, seen.topic, seen.seq, seen.epoch, seen.lamport, duplicate=True
                )
        if self.cluster is not None:
            self.cluster.check_route(cmd.topic)
        payload = self._encode_payload(cmd)
        epoch, seq = self.sequencer.next(cmd.topic)
        lamport = self.lamport.tick(cmd.lamport)
        event_id = new_event_id()
        envelope = encode_envelope(
            event_id,
            cmd.topic,
            seq,
            epoch,
            rfc3339_now(),
            source,
            cmd.correlation_id,
            cmd.causation_id,
            lamport,
            cmd.headers,
            payload,
        )
        result = PublishResult(event_id, cmd.topic, seq, epoch, lamport)
        if dedupe_key is not None:
            self.dedupe.put(dedupe_key, result)
        self.stats.publishes += 1
        self.deliver_envelope(cmd.topic, envelope, cmd.headers, seq, durable=False)
        if self.cluster is not None:
            self.cluster.published(cmd.topic, envelope)
        return result

    def _fan_out(
        self, topic: str, envelope: bytes, headers: dict[str, str], seq: int, durable: bool
    ) -> None:
        """Queue the event on every matching subscription; a durable event goes to a resumed
        subscription only above the last position it was sent (``Subscription.after``), so
        a position reaching this node late or twice (a late broker delivery, a cluster feed
        catching up from history) never reaches the client again."""
        subs = self.index.match(topic)
        if not subs:
            return
        frame = ws_text_frame(event_message(envelope))  # only when someone listens
        now = self.clock()
        entries: dict[tuple[Policy, str], Entry] = {}
        dirty = self._dirty
        for sub in subs:
            if durable and sub.after is not None:
                if seq <= sub.after:
                    continue
                sub.after = seq
            variant = (sub.policy, sub.key_header)
            entry = entries.get(variant)
            if entry is None:
                key = headers.get(sub.key_header) if sub.policy is Policy.LATEST_PER_KEY else None
                entry = entries[variant] = Entry(frame, sub.policy, key, now)
            conn = sub.owner
            if conn.recovering:
                replaying = conn.recovering.get(topic)
                if replaying is not None:
                    # Whatever pattern matched, this connection gets the topic from its
                    # replay, which merges these parked events after the history.
                    self._park(replaying, seq, Entry(frame, replaying.policy, None, now))
                    continue
            queue = conn.queue
            dropped_before = queue.dropped
            outcome = queue.push(entry)
            if outcome is PushOutcome.QUEUED:
                if not conn.dirty:
                    conn.dirty = True
                    dirty.append(conn)
            elif outcome is PushOutcome.DROPPED:
                drops = self.stats.drops
                name = sub.policy.value
                drops[name] = drops.get(name, 0) + queue.dropped - dropped_before
                if not conn.dirty:
                    conn.dirty = True
                    dirty.append(conn)
            else:
                self.stats.slow_disconnects += 1
                self.close(conn, CloseCode.SLOW_CONSUMER, "slow consumer", flush=False)
        if dirty and not self._flush_scheduled:
            self._flush_scheduled = True
            self._call_soon(self.flush_dirty)

    def _park(self, sub: Subscription, seq: int, entry: Entry) -> None:
        """Hold a live event for a subscription that is still replaying history."""
        assert sub.recovering is not None
        if len(sub.recovering) >= self.config.max_recovery_buffer:
            self.stats.slow_disconnects += 1
            self.close(sub.owner, CloseCode.SLOW_CONSUMER, "recovery buffer full", flush=False)
            return
        sub.recovering.append((seq, entry))

    # -- writing -----------------------------------------------------------------------

    def mark_dirty(self, conn: Connection) -> None:
        """Schedule ``conn``'s writer for the end of this loop iteration."""
        if not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._call_soon(self.flush_dirty)

    def flush_dirty(self) -> None:
        """Run the writer of every connection that has something queued."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        now = self.clock()
        for conn in dirty:
            conn.flush(now)
