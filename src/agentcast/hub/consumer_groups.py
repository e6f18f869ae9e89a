"""Runs consumer groups on a node: loads and saves their progress, reads history for them,
sends their deliveries and dead-letters what used up its attempts.

Group deliveries are control frames on the member's connection (never dropped by a
slow-consumer policy; ``max_in_flight`` bounds them) of the form
``{"type": "event", "group": NAME, "attempt": N, "event": ENVELOPE}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from agentcast.errors import AgentcastError, NotInFlight, PayloadTooLarge
from agentcast.hub.group_relay import GroupRelay, RemoteRef
from agentcast.hub.groups import ConsumerGroup, DeadLetter, Delivery, GroupSettings, Member
from agentcast.protocol.commands import Publish
from agentcast.protocol.frames import ws_text_frame
from agentcast.protocol.topics import tenant_of
from agentcast.storage.consumers import ConsumerStore, GroupProgress

if TYPE_CHECKING:
    from agentcast.hub.connection import Connection
    from agentcast.hub.hub import Hub

log = logging.getLogger(__name__)

READ_PAGE = 256
SAVE_DELAY = 0.05
READ_RETRY = 1.0
DEAD_LETTER_RETRY = 1.0


def group_event_message(group: str, attempt: int, envelope_json: bytes) -> bytes:
    """The JSON of a group delivery."""
    return (
        b'{"type":"event","group":'
        + orjson.dumps(group)
        + b',"attempt":'
        + str(attempt).encode()
        + b',"event":'
        + envelope_json
        + b"}"
    )


class GroupRunner:
    """Drives one :class:`ConsumerGroup`; all methods run on the hub's loop."""

    def __init__(self, hub: Hub, group: ConsumerGroup, epoch: str, store: ConsumerStore):
        self.hub = hub
        self.group = group
        self.epoch = epoch
        self.store = store
        self.appends = 0
        self._pumping = False
        self._save_handle: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        """Make progress soon (assign, read, send); coalesces concurrent pokes."""
        if not self._pumping:
            self._pumping = True
            self.hub.spawn(self._pump())

    def appended(self, seq: int) -> None:
        self.appends += 1
        self.group.notify_appended(seq)
        self.poke()

    async def _pump(self) -> None:
        history = self.hub.history
        assert history is not None
        group = self.group
        try:
            while True:
                deliveries, dead = group.assign(self.hub.clock())
                for delivery in deliveries:
                    self._send(delivery)
                for letter in dead:
                    self._dead_letter(letter)
                want = group.wants_events()
                if not want:
                    return
                seen = self.appends
                try:
                    events = await history.read(group.topic, group.cursor, min(want, READ_PAGE))
                except Exception as exc:
                    log.warning(
                        "group %s on %s: history read failed (%s); retrying",
                        group.name,
                        group.topic,
                        exc,
                    )
                    asyncio.get_running_loop().call_later(READ_RETRY, self.poke)
                    return
                if events:
                    if not self.epoch:
                        # The group was created before its topic had an event.
                        self.epoch = events[0].epoch
                    group.add_events(events)
                elif seen == self.appends:
                    group.caught_up = True
        finally:
            self._pumping = False

    def _send(self, delivery: Delivery) -> None:
        assert delivery.member is not None
        message = group_event_message(
            self.group.name, delivery.attempts, delivery.event.envelope_json()
        )
        owner = delivery.member.owner
        if isinstance(owner, RemoteRef):
            relay = self.hub.groups.relay if self.hub.groups is not None else None
            if relay is not None:
                relay.deliver(owner, (self.group.topic, self.group.name), ws_text_frame(message))
        else:
            conn: Connection = owner  # type: ignore[assignment]
            conn.send_control(ws_text_frame(message))
        self.hub.stats.group_deliveries += 1

    def _dead_letter(self, letter: DeadLetter) -> None:
        group = self.group
        event = letter.delivery.event
        topic = group.settings.dead_letter_topic or (
            f"{tenant_of(group.topic)}.dead-letter.{group.name}"
        )
        payload: dict[str, Any] = {
            "group": group.name,
            "topic": group.topic,
            "seq": event.seq,
            "attempts": letter.delivery.attempts,
            "reason": letter.reason,
            "event": orjson.loads(event.envelope_json()),
        }
        cmd = Publish(
            None,
            topic,
            payload,
            {"reason": letter.reason[:1024]},
            causation_id=event.id,
            correlation_id=event.correlation_id,
        )
        source = f"ac://node/{self.hub.node_id}/group/{group.name}"
        try:
            try:
                published = self.hub.publish_any(cmd, source)
            except PayloadTooLarge:
                # The original payload fills the limit: dead-letter its envelope without it.
                payload["event"]["payload"] = None
                payload["payload_omitted"] = True
                published = self.hub.publish_any(cmd, source)
        except AgentcastError as exc:
            self._dead_letter_failed(letter, exc)
            return
        if isinstance(published, asyncio.Future):
            published.add_done_callback(lambda done: self._dead_lettered(letter, done))
        else:
            self._done(event.seq)

    def _dead_lettered(self, letter: DeadLetter, done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            self._dead_letter_failed(letter, exc)
        else:
            self._done(letter.delivery.event.seq)

    def _dead_letter_failed(self, letter: DeadLetter, exc: BaseException) -> None:
        """Keep the event and try again later: a dead letter must not be lost either."""
        seq = letter.delivery.event.seq
        log.error("dead-lettering %s#%d failed (%s); retrying", self.group.topic, seq, exc)
        self.group.retry_dead_letter(letter, self.hub.clock() + DEAD_LETTER_RETRY)

    def _done(self, seq: int) -> None:
        self.hub.stats.group_dead_letters += 1
        self.group.mark_done(seq)
        self.schedule_save()
        self.poke()

    def schedule_save(self) -> None:
        """Persist progress within ``SAVE_DELAY`` (coalesced)."""
        if self._save_handle is None:
            loop = asyncio.get_running_loop()
            self._save_handle = loop.call_later(SAVE_DELAY, self._save_now)

    def _save_now(self) -> None:
        self._save_handle = None
        self.hub.spawn(self.save())

    async def save(self) -> None:
        group = self.group
        progress = GroupProgress(self.epoch, group.floor, frozenset(group.done_above))
        try:
            await self.store.save(group.topic, group.name, progress)
        except Exception:
            log.exception("saving progress of group %s on %s failed", group.name, group.topic)

    def cancel_save(self) -> None:
        if self._save_handle is not None:
            self._save_handle.cancel()
            self._save_handle = None


class GroupManager:
    """The node's consumer groups, keyed by ``(topic, group)``."""

    def __init__(self, hub: Hub, store: ConsumerStore) -> None:
        self.hub = hub
        self.store = store
        self.runners: dict[tuple[str, str], GroupRunner] = {}
        self._by_topic: dict[str, dict[str, GroupRunner]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[GroupRunner]] = {}
        self._retired: dict[tuple[str, str], GroupRunner] = {}
        self.relay: GroupRelay | None = None
        self._remote_members: dict[tuple[tuple[str, str], RemoteRef], Member] = {}

    async def join(
        self, conn: Connection, topic: str, name: str, settings: GroupSettings
    ) -> GroupRunner | None:
        """Add ``conn`` to the group (created from stored progress on first join). In a
        cluster a group runs on its tenant's owner node: elsewhere the membership is
        forwarded there and ``None`` is returned."""
        key = (topic, name)
        if self.relay is not None and self.relay.is_remote(key):
            if key not in conn.groups:
                conn.groups[key] = self.placeholder(conn)
                self.relay.join(conn, key, settings)
            return None
        return await self.join_local(conn, key, settings)

    def placeholder(self, conn: Connection) -> Member:
        """The entry in ``conn.groups`` of a membership forwarded to another node."""
        return Member(conn)

    async def join_local(
        self, conn: Connection, key: tuple[str, str], settings: GroupSettings
    ) -> GroupRunner:
        """Add ``conn`` to the group run on this node."""
        topic, name = key
        runner = (
            self.runners.get(key) or self._retired.pop(key, None) or await self._load(key, settings)
        )
        self.runners.setdefault(key, runner)
        self._by_topic.setdefault(topic, {}).setdefault(name, runner)
        if conn.closed or key in conn.groups:
            # Closed during the load, or joined twice at once: no second member.
            if not runner.group.members:
                self._retire(key, runner)
            return runner
        member = runner.group.add_member(conn)
        conn.groups[key] = member
        if self.hub.cluster is not None:
            self.hub.cluster.interest_up(topic)
        runner.poke()
        return runner

    async def _load(self, key: tuple[str, str], settings: GroupSettings) -> GroupRunner:
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[GroupRunner] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            history = self.hub.history
            assert history is not None
            topic, name = key
            position = await history.position(topic)
            epoch = position.epoch if position else ""
            progress = await self.store.load(topic, name)
            floor, done = 0, frozenset[int]()
            if progress is not None and progress.epoch == epoch:
                floor, done = progress.floor, progress.done
            group = ConsumerGroup(topic, name, settings, floor, done)
            runner = self.runners[key] = GroupRunner(self.hub, group, epoch, self.store)
            self._by_topic.setdefault(topic, {})[name] = runner
            future.set_result(runner)
            return runner
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters re-raise it
            raise
        finally:
            del self._loading[key]

    def leave(self, conn: Connection, key: tuple[str, str]) -> bool:
        """Remove ``conn`` from a group; its deliveries go back to the others."""
        if self.relay is not None and self.relay.holds(conn, key):
            conn.groups.pop(key, None)
            self.relay.leave(conn, key)
            return True
        member = conn.groups.pop(key, None)
        runner = self.runners.get(key)
        if member is None or runner is None:
            return False
        if self.hub.cluster is not None:
            self.hub.cluster.interest_down(key[0])
        runner.group.remove_member(member, self.hub.clock())
        if not runner.group.members:
            self._retire(key, runner)
        else:
            runner.poke()
        return True

    def _retire(self, key: tuple[str, str], runner: GroupRunner) -> None:
        """Unload a group with no members (its progress is saved)."""
        runner.cancel_save()
        self.runners.pop(key, None)
        by_name = self._by_topic.get(key[0], {})
        by_name.pop(key[1], None)
        if not by_name:
            self._by_topic.pop(key[0], None)
        self._retired[key] = runner
        self.hub.spawn(self._final_save(key, runner))

    def _member(self, conn: Connection, key: tuple[str, str]) -> tuple[GroupRunner, Member]:
        member = conn.groups.get(key)
        runner = self.runners.get(key)
        if member is None or runner is None:
            raise NotInFlight(f"not a member of group {key[1]!r} on {key[0]!r}")
        return runner, member

    def ack(self, conn: Connection, key: tuple[str, str], seq: int) -> None:
        if self.relay is not None and self.relay.holds(conn, key):
            self.relay.ack(conn, key, seq)
            return
        runner, member = self._member(conn, key)
        if not runner.group.ack(member, seq):
            raise NotInFlight(f"seq {seq} is not in flight to this connection")
        runner.schedule_save()
        runner.poke()

    def nack(
        self, conn: Connection, key: tuple[str, str], seq: int, delay: float, reason: str
    ) -> None:
        if self.relay is not None and self.relay.holds(conn, key):
            self.relay.nack(conn, key, seq, delay, reason)
            return
        runner, member = self._member(conn, key)
        if not runner.group.nack(member, seq, delay, reason, self.hub.clock()):
            raise NotInFlight(f"seq {seq} is not in flight to this connection")
        runner.poke()

    # -- members on other nodes (this node owns the group) ------------------------------

    async def join_remote(
        self, ref: RemoteRef, key: tuple[str, str], settings: GroupSettings
    ) -> None:
        if (key, ref) in self._remote_members:
            return
        runner = (
            self.runners.get(key) or self._retired.pop(key, None) or await self._load(key, settings)
        )
        self.runners.setdefault(key, runner)
        self._by_topic.setdefault(key[0], {}).setdefault(key[1], runner)
        self._remote_members[(key, ref)] = runner.group.add_member(ref)
        if self.hub.cluster is not None:
            self.hub.cluster.interest_up(key[0])
        runner.poke()

    def ack_remote(self, ref: RemoteRef, key: tuple[str, str], seq: int) -> None:
        member = self._remote_members.get((key, ref))
        runner = self.runners.get(key)
        if member is not None and runner is not None and runner.group.ack(member, seq):
            runner.schedule_save()
            runner.poke()

    def nack_remote(
        self, ref: RemoteRef, key: tuple[str, str], seq: int, delay: float, reason: str
    ) -> None:
        member = self._remote_members.get((key, ref))
        runner = self.runners.get(key)
        now = self.hub.clock()
        if (
            member is not None
            and runner is not None
            and runner.group.nack(member, seq, delay, reason, now)
        ):
            runner.poke()

    def leave_remote(self, ref: RemoteRef, key: tuple[str, str]) -> None:
        member = self._remote_members.pop((key, ref), None)
        runner = self.runners.get(key)
        if member is None or runner is None:
            return
        if self.hub.cluster is not None:
            self.hub.cluster.interest_down(key[0])
        runner.group.remove_member(member, self.hub.clock())
        if not runner.group.members:
            self._retire(key, runner)
        else:
            runner.poke()

    def drop_remote_members(self, gone: Callable[[RemoteRef], bool]) -> None:
        """Forget remote members matching ``gone`` (their node left the cluster)."""
        for key, ref in [pair for pair in self._remote_members if gone(pair[1])]:
            self.leave_remote(ref, key)

    def local_members_not_owned(self) -> list[tuple[tuple[str, str], Connection]]:
        """Local members of groups this node runs but no longer owns (after a ring change);
        the remote members of those groups are dropped (their nodes re-join the owner)."""
        assert self.relay is not None
        moved: list[tuple[tuple[str, str], Connection]] = []
        for key, runner in list(self.runners.items()):
            if not self.relay.is_remote(key):
                continue
            for member in list(runner.group.members):
                if isinstance(member.owner, RemoteRef):
                    self.leave_remote(member.owner, key)
                else:
                    moved.append((key, member.owner))  # type: ignore[arg-type]
        return moved

    def appended(self, topic: str, seq: int) -> None:
        """A durable event was committed on ``topic``."""
        for runner in self._by_topic.get(topic, {}).values():
            runner.appended(seq)

    def sweep(self, now: float) -> None:
        """Expire ack timeouts and release due redeliveries."""
        for runner in self.runners.values():
            if runner.group.expire(now) or runner.group.has_due(now):
                runner.poke()

    async def _final_save(self, key: tuple[str, str], runner: GroupRunner) -> None:
        await runner.save()
        if self._retired.get(key) is runner:
            del self._retired[key]

    async def save_all(self) -> None:
        """Save every group's progress now (at shutdown, after tasks were cancelled)."""
        for runner in [*self.runners.values(), *self._retired.values()]:
            runner.cancel_save()
            await runner.save()
        self._retired.clear()
