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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentcast.errors import PositionLost
from agentcast.hub.durability import DurableRule, GapPolicy
from agentcast.hub.outbound import Entry
from agentcast.protocol.commands import Position, Subscribe
from agentcast.protocol.frames import event_message, ws_text_frame
from agentcast.storage.base import StoredEvent

if TYPE_CHECKING:
    from agentcast.hub.connection import Subscription
    from agentcast.hub.hub import Hub

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
    if position is None:
        return since.seq == 0
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
    """Send the planned history, then merge the parked live events and go live."""
    sub = plan.sub
    conn = sub.owner
    cursor = 0
    for event in plan.events:
        _push(hub, sub, event)
        cursor = event.seq
    if plan.page_from is not None:
        cursor = max(cursor, plan.page_from)
        cursor = await _page(hub, sub, cursor)
    if conn.closed or conn.subscriptions.get(sub.pattern) is not sub:
        return
    parked, sub.recovering = sub.recovering or [], None
    for seq, entry in parked:
        if seq > cursor:
            hub.deliver(sub, entry)


async def _page(hub: Hub, sub: Subscription, cursor: int) -> int:
    store = hub.history
    assert store is not None
    page_size = hub.config.replay_page
    conn = sub.owner
    while True:
        page = await store.read(sub.pattern, cursor, page_size)
        if conn.closed:
            return cursor
        for event in page:
            _push(hub, sub, event)
            cursor = event.seq
        if len(page) < page_size:
            return cursor
        parked = sub.recovering
        if parked and parked[0][0] <= cursor + 1:
            return cursor
        await _drained(sub)


def _push(hub: Hub, sub: Subscription, event: StoredEvent) -> None:
    conn = sub.owner
    if conn.closed:
        return
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
