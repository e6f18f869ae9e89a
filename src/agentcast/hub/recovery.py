"""Resume of a durable subscription: replay history, then switch to live with no gap and
no duplicate.

The subscription is indexed (with ``recovering`` set) *before* the store is read, so every
event committed from then on is parked on it. The replay reads the store in pages (waiting
for the connection to drain between pages, so a slow client never makes the queue grow past
one page), stops where the parked events begin, and then the parked events with a ``seq``
above the last replayed one are delivered. Both sources are ordered by ``seq`` and the
merge is synchronous, so the client sees each position exactly once, in order.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentcast.errors import PositionLost
from agentcast.hub.durability import DurableRule, GapPolicy
from agentcast.hub.outbound import Entry
from agentcast.protocol.codes import CloseCode
from agentcast.protocol.commands import Position, Subscribe
from agentcast.protocol.frames import event_message, ws_text_frame
from agentcast.storage.base import StoredEvent

if TYPE_CHECKING:
    from agentcast.hub.connection import Subscription
    from agentcast.hub.hub import Hub

log = logging.getLogger(__name__)

MAX_SNAPSHOT_EVENTS = 10_000


@dataclass(slots=True)
class RecoveryPlan:
    """What to send before going live: ``events`` first, then pages after ``page_from``
    (``None``: no paging)."""

    sub: Subscription
    recovered: bool
    epoch: str | None
    last_seq: int
    events: list[StoredEvent] = field(default_factory=list)
    page_from: int | None = None

    def reply(self) -> dict[str, Any]:
        return {
            "topic": self.sub.pattern,
            "recovered": self.recovered,
            "epoch": self.epoch,
            "seq": self.last_seq,
        }


async def plan_recovery(
    hub: Hub, sub: Subscription, request: Subscribe, rule: DurableRule
) -> RecoveryPlan:
    """Decide what ``sub`` must replay; raises :class:`PositionLost` under ``refuse``."""
    store = hub.history
    assert store is not None
    topic = sub.pattern
    position = await store.position(topic)
    epoch = position.epoch if position else None
    last_seq = position.last_seq if position else 0
    plan = RecoveryPlan(sub, True, epoch, last_seq)
    if request.since is not None:
        if _recoverable(request.since, position):
            plan.page_from = request.since.seq
            return plan
        plan.recovered = False
        if rule.on_gap is GapPolicy.REFUSE:
            raise PositionLost(
                f"position {request.since.epoch}:{request.since.seq} of {topic!r} is no "
                f"longer in history (now {epoch}:{last_seq})"
            )
        if rule.on_gap is GapPolicy.SNAPSHOT:
            window = min(rule.max_events, MAX_SNAPSHOT_EVENTS)
            plan.events = _latest_per_key(await store.read_last(topic, window), rule.snapshot_key)
    elif request.last is not None:
        plan.events = await store.read_last(topic, min(request.last, MAX_SNAPSHOT_EVENTS))
    elif request.since_time is not None:
        page = hub.config.replay_page
        plan.events = await store.read_since_time(topic, request.since_time, page)
        if len(plan.events) == page:
            plan.page_from = plan.events[-1].seq
    return plan


def _recoverable(since: Position, position: Any) -> bool:
    if since.seq == 0:
        # Nothing seen yet: recoverable while the history is complete, whatever the epoch.
        return position is None or bool(position.first_seq <= 1)
    if position is None:
        return False
    return bool(
        since.epoch == position.epoch and position.first_seq - 1 <= since.seq <= position.last_seq
    )


def _latest_per_key(events: list[StoredEvent], key_header: str) -> list[StoredEvent]:
    """The newest event per ``key_header`` value (events without the header are kept),
    in ``seq`` order."""
    newest: dict[str, StoredEvent] = {}
    keep: list[StoredEvent] = []
    for event in events:
        key = event.headers.get(key_header)
        if key is None:
            keep.append(event)
        else:
            newest[key] = event
    return sorted([*keep, *newest.values()], key=lambda e: e.seq)


async def run_replay(hub: Hub, plan: RecoveryPlan) -> None:
    """Send the planned history, then the parked live events, and go live.

    Everything is sent in pages of ``replay_page`` events, each page waiting until the
    connection drained the previous one; live events keep being parked until the parked
    list is empty at a synchronous point, where the subscription goes live. The replay
    stops as soon as the subscription is removed or replaced, or the connection closes. A
    store failure closes the connection with 4003 so the client resumes elsewhere or later.
    """
    sub = plan.sub
    try:
        cursor = await _send_events(hub, sub, plan.events, 0)
        if plan.page_from is not None:
            cursor = await _page(hub, sub, max(cursor, plan.page_from))
        # The subscription starts after the position its reply named, whatever was replayed.
        await _merge_parked(hub, sub, max(cursor, plan.last_seq))
    except _Stopped:
        return
    except Exception:
        log.exception("replay of %s failed", sub.pattern)
        if _current(sub):
            hub.unsubscribe(sub.owner, sub.pattern)
        hub.close(sub.owner, CloseCode.SERVER_ERROR, "history replay failed", flush=True)


class _Stopped(Exception):
    """The subscription went away during its replay."""


def _current(sub: Subscription) -> bool:
    conn = sub.owner
    return not conn.closed and conn.subscriptions.get(sub.pattern) is sub


async def _send_events(hub: Hub, sub: Subscription, events: list[StoredEvent], cursor: int) -> int:
    page_size = hub.config.replay_page
    for start in range(0, len(events), page_size):
        for event in events[start : start + page_size]:
            _push(hub, sub, event)
            cursor = event.seq
        await _drained(sub)
    return cursor


async def _page(hub: Hub, sub: Subscription, cursor: int) -> int:
    store = hub.history
    assert store is not None
    page_size = hub.config.replay_page
    while True:
        page = await store.read(sub.pattern, cursor, page_size)
        cursor = await _send_events(hub, sub, page, cursor)
        if len(page) < page_size:
            return cursor
        parked = sub.recovering
        if parked and parked[0][0] <= cursor + 1:
            return cursor


async def _merge_parked(hub: Hub, sub: Subscription, cursor: int) -> None:
    """Send the parked live events after ``cursor`` in pages; go live once none is left.

    Parked events that do not follow ``cursor`` (in a cluster, the events between were
    committed by another node after the history was read and never came through the broker,
    or not yet) are preceded by the history up to them. Going live records ``cursor`` as the
    subscription's start (:attr:`Subscription.after`) and tells the cluster feed of the topic
    where this subscription continues (:meth:`ClusterLink.resumed`)."""
    page_size = hub.config.replay_page
    filled_from = -1
    while True:
        if not _current(sub):
            raise _Stopped
        parked = sub.recovering
        assert parked is not None
        if parked and parked[0][0] > cursor + 1 and cursor != filled_from:
            filled_from = cursor
            cursor = await _page(hub, sub, cursor)
            continue
        if not parked:
            sub.recovering = None
            sub.owner.recovering.pop(sub.pattern, None)
            sub.after = cursor
            if hub.cluster is not None:
                hub.cluster.resumed(sub.pattern, cursor)
            return
        page = parked[:page_size]
        del parked[:page_size]
        for seq, entry in page:
            if seq > cursor:
                sub.owner.queue.push_replay(entry)
                cursor = seq
        hub.mark_dirty(sub.owner)
        await _drained(sub)


def _push(hub: Hub, sub: Subscription, event: StoredEvent) -> None:
    if not _current(sub):
        raise _Stopped
    conn = sub.owner
    frame = ws_text_frame(event_message(event.envelope_json()))
    conn.queue.push_replay(Entry(frame, sub.policy, None, hub.clock()))
    hub.mark_dirty(conn)


async def _drained(sub: Subscription) -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done() -> None:
        if not future.done():
            future.set_result(None)

    sub.owner.when_drained(done)
    await future
    if not _current(sub):
        raise _Stopped
