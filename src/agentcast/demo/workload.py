"""The simulated multi-agent workload: sessions of chatty agents plus one dashboard each.

Each session ``demo.session-<i>`` has agents that each hold their own client connection,
subscribe to the session chat ``demo.session-<i>.chat`` and to their inbox
``demo.session-<i>.agent.<name>.inbox``, and publish at about ``rate`` messages per second
(uniform jitter of ±50 % on the gap) either to the chat or to another agent's inbox. Every
publish carries ``correlation_id`` = the session name; a reaction to a received event also
carries ``causation_id`` = that event's id (a reaction to an inbox message is a reply to the
sender's inbox). Payloads carry ``sent_ns`` (``time.monotonic_ns()`` at send) so receivers
measure publish-to-receive latency. One observer per session subscribes to
``demo.session-<i>.>`` with ``latest_per_key`` (odd sessions) or ``drop_oldest`` (even
sessions): a dashboard that never blocks fan-out.

Phases of :meth:`Workload.run`: every client connects and subscribes; publishing starts once
all have (or ``stop`` is set); after ``stop`` every sender finishes its current publish, the
workload waits up to ``DRAIN_TIMEOUT`` seconds for the deliveries still in flight (every
expected agent delivery, and one observer delivery per publish unless a policy dropped it,
in which case the wait runs out), then every client unsubscribes and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from agentcast.client import Client, Subscription
from agentcast.demo.stats import TrafficRow, TrafficStats
from agentcast.demo.window import SlidingWindow
from agentcast.protocol.commands import Policy
from agentcast.protocol.envelope import Envelope

log = logging.getLogger(__name__)

TOPIC_ROOT = "demo"
CONNECT_TIMEOUT = 10.0
DRAIN_TIMEOUT = 3.0
REACT_PROBABILITY = 0.7
CHAT_PROBABILITY = 0.5
RUN_SAMPLES = 20_000

ROLE_LINES: dict[str, tuple[str, ...]] = {
    "planner": ("splitting the goal into steps", "next step assigned", "plan revised"),
    "researcher": ("found three relevant sources", "summary of prior work", "citation check"),
    "coder": ("patch ready for review", "tests added", "refactor pushed"),
    "critic": ("edge case missing", "looks correct to me", "naming is unclear"),
    "tool-runner": ("tool call finished", "search returned 12 hits", "sandbox run ok"),
    "reviewer": ("approved with nits", "requesting changes", "second pass done"),
    "summarizer": ("progress summary posted", "decision log updated", "tl;dr ready"),
    "retriever": ("context window refreshed", "top-k documents fetched", "cache hit"),
}
ROLES = tuple(ROLE_LINES)


def agent_names(count: int) -> list[tuple[str, str]]:
    """``count`` distinct ``(name, role)`` pairs: ``planner-1``, ``researcher-1``, ..."""
    return [
        (f"{ROLES[i % len(ROLES)]}-{i // len(ROLES) + 1}", ROLES[i % len(ROLES)])
        for i in range(count)
    ]


def latency_ms(payload: Any, now_ns: int) -> float | None:
    """Publish-to-receive latency of an event whose payload carries ``sent_ns``."""
    if isinstance(payload, dict):
        sent = payload.get("sent_ns")
        if isinstance(sent, int):
            return (now_ns - sent) / 1e6
    return None


async def wait_event(event: asyncio.Event, within: float) -> bool:
    """Wait at most ``within`` seconds for ``event``; ``True`` if it is set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(within):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def wait_any(*events: asyncio.Event) -> None:
    """Return once any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


class Session:
    """One simulated session: its topics, its agents' subscription state and its counters."""

    def __init__(self, workload: Workload, index: int, agents: int, start: float) -> None:
        self.workload = workload
        self.index = index
        self.name = f"session-{index}"
        self.prefix = f"{TOPIC_ROOT}.{self.name}"
        self.chat_topic = f"{self.prefix}.chat"
        self.policy = Policy.LATEST_PER_KEY if index % 2 else Policy.DROP_OLDEST
        self.names = agent_names(agents)
        self.subscribed: set[str] = set()
        self.stats = TrafficStats(
            self.name,
            start,
            agents_total=agents,
            observers_total=1,
            observer_policy=self.policy.value,
        )

    def inbox(self, name: str) -> str:
        return f"{self.prefix}.agent.{name}.inbox"


class Agent:
    """A simulated agent: one connection, two subscriptions, a sender and two readers."""

    def __init__(self, session: Session, name: str, role: str, rng: random.Random) -> None:
        self.session = session
        self.workload = session.workload
        self.name = name
        self.role = role
        self.rng = rng
        self.peers = [peer for peer, _ in session.names if peer != name]
        self.sent = 0
        self._trigger: tuple[Envelope, bool] | None = None

    async def run(self) -> None:
        workload = self.workload
        session = self.session
        client = Client(workload.url, name=f"{session.name}.{self.name}")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.connect()
                chat = await client.subscribe(session.chat_topic)
                inbox = await client.subscribe(session.inbox(self.name))
            workload.joined(session, self.name)
            async with asyncio.TaskGroup() as tasks:
                readers = [
                    tasks.create_task(self._read(chat, inbox=False)),
                    tasks.create_task(self._read(inbox, inbox=True)),
                ]
                await workload.started.wait()
                await self._send_until_stopped(client)
                workload.sender_stopped()
                await workload.finished.wait()
                workload.left(session, self.name)
                for sub in (chat, inbox):
                    await _unsubscribe(sub)
                for reader in readers:
                    reader.cancel()
        finally:
            await client.close()

    async def _send_until_stopped(self, client: Client) -> None:
        stop = self.workload.stop
        period = 1.0 / self.workload.rate
        delay = self.rng.uniform(0.0, period)
        while not await wait_event(stop, delay):
            await self._publish_one(client)
            delay = period * self.rng.uniform(0.5, 1.5)

    def _choose(self) -> tuple[str, str | None, str]:
        """``(topic, causation_id, kind)`` of the next message."""
        session = self.session
        trigger, self._trigger = self._trigger, None
        rng = self.rng
        if trigger is not None and rng.random() < REACT_PROBABILITY:
            event, to_inbox = trigger
            sender = event.payload.get("from") if isinstance(event.payload, dict) else None
            if to_inbox and isinstance(sender, str) and sender in self.peers:
                return session.inbox(sender), event.id, "reply"
            return session.chat_topic, event.id, "reaction"
        if not self.peers or rng.random() < CHAT_PROBABILITY:
            return session.chat_topic, None, "note"
        return session.inbox(rng.choice(self.peers)), None, "request"

    async def _publish_one(self, client: Client) -> None:
        session = self.session
        topic, causation_id, kind = self._choose()
        if topic == session.chat_topic:
            expected, unread = len(session.subscribed), False
        else:
            addressee = topic.split(".")[-2]
            expected = int(addressee in session.subscribed)
            unread = not expected
        self.sent += 1
        payload = {
            "from": self.name,
            "role": self.role,
            "kind": kind,
            "n": self.sent,
            "text": self.rng.choice(ROLE_LINES[self.role]),
            "sent_ns": time.monotonic_ns(),
        }
        self.workload.sending(session, expected, unread=unread)
        try:
            await client.publish(
                topic,
                payload,
                headers={"key": self.name, "role": self.role},
                correlation_id=session.name,
                causation_id=causation_id,
            )
        except Exception as exc:  # a refused or lost publish must not end the agent
            self.workload.send_failed(session, expected)
            log.warning("%s/%s: publish to %s failed: %s", session.name, self.name, topic, exc)

    async def _read(self, sub: Subscription, *, inbox: bool) -> None:
        workload = self.workload
        session = self.session
        async for event in sub:
            now_ns = time.monotonic_ns()
            workload.received(session, now_ns, latency_ms(event.payload, now_ns), observer=False)
            payload = event.payload
            if isinstance(payload, dict) and payload.get("from") != self.name:
                self._trigger = (event, inbox)


class Observer:
    """A session dashboard: one wildcard subscription with a dropping policy."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.workload = session.workload

    async def run(self) -> None:
        workload = self.workload
        session = self.session
        client = Client(workload.url, name=f"{session.name}.dashboard")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await client.connect()
                sub = await client.subscribe(
                    f"{session.prefix}.>", policy=session.policy, key_header="key"
                )
            workload.joined(session, None)
            async with asyncio.TaskGroup() as tasks:
                reader = tasks.create_task(self._read(sub))
                await workload.finished.wait()
                workload.left(session, None)
                await _unsubscribe(sub)
                reader.cancel()
        finally:
            await client.close()

    async def _read(self, sub: Subscription) -> None:
        workload = self.workload
        session = self.session
        async for event in sub:
            now_ns = time.monotonic_ns()
            workload.received(session, now_ns, latency_ms(event.payload, now_ns), observer=True)


async def _unsubscribe(sub: Subscription) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


class Workload:
    """Every session of the demo; :meth:`run` drives them through the phases above."""

    def __init__(
        self,
        url: str,
        *,
        sessions: int,
        agents: int,
        rate: float,
        stop: asyncio.Event,
        seed: int | None = None,
    ) -> None:
        if sessions < 1 or agents < 1 or rate <= 0:
            raise ValueError("need at least one session and one agent, and a positive rate")
        self.url = url
        self.rate = rate
        self.stop = stop
        self.start = time.monotonic()
        self.rng = random.Random(seed)
        self.sessions = [Session(self, i + 1, agents, self.start) for i in range(sessions)]
        self.total = TrafficStats(
            "total",
            self.start,
            agents_total=sessions * agents,
            observers_total=sessions,
        )
        self.run_latency = SlidingWindow(
            self.start, span=1e12, resolution=1e12, max_samples=RUN_SAMPLES, rng=self.rng
        )
        self.started = asyncio.Event()
        self.finished = asyncio.Event()
        self._all_joined = asyncio.Event()
        self._drained = asyncio.Event()
        self._senders_stopped = asyncio.Event()
        self.closed = False
        self._draining = False
        self._senders = sessions * agents

    # -- phases --------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect everyone, publish until ``stop``, drain, then close every client."""
        async with asyncio.TaskGroup() as tasks:
            for session in self.sessions:
                for name, role in session.names:
                    rng = random.Random(self.rng.getrandbits(64))
                    agent = Agent(session, name, role, rng)
                    tasks.create_task(agent.run(), name=f"{session.name}.{name}")
                tasks.create_task(Observer(session).run(), name=f"{session.name}.dashboard")
            await wait_any(self._all_joined, self.stop)
            self.started.set()
            await self.stop.wait()
            await self._senders_stopped.wait()
            self._draining = True
            self._check_drained()
            await wait_event(self._drained, DRAIN_TIMEOUT)
            self.finished.set()
        self.closed = True

    def sender_stopped(self) -> None:
        """An agent has stopped publishing (after ``stop``)."""
        self._senders -= 1
        if self._senders == 0:
            self._senders_stopped.set()

    @property
    def phase(self) -> str:
        """``connecting``, ``running``, ``draining`` (after stop), ``closing`` or ``stopped``."""
        if self.closed:
            return "stopped"
        if self.finished.is_set():
            return "closing"
        if self.stop.is_set():
            return "draining"
        return "running" if self.started.is_set() else "connecting"

    # -- accounting (called by agents and observers) ---------------------------------------

    def joined(self, session: Session, name: str | None) -> None:
        """An agent (``name``) or the observer (``None``) is connected and subscribed."""
        observer = name is None
        if name is not None:
            session.subscribed.add(name)
        session.stats.joined(observer=observer)
        self.total.joined(observer=observer)
        total = self.total
        if (
            total.agents_ever == total.agents_total
            and total.observers_ever == total.observers_total
        ):
            self._all_joined.set()

    def left(self, session: Session, name: str | None) -> None:
        observer = name is None
        if name is not None:
            session.subscribed.discard(name)
        session.stats.left(observer=observer)
        self.total.left(observer=observer)

    def sending(self, session: Session, expected: int, *, unread: bool) -> None:
        now = time.monotonic()
        session.stats.sent(now, expected, unread=unread)
        self.total.sent(now, expected, unread=unread)

    def send_failed(self, session: Session, expected: int) -> None:
        session.stats.unsent(expected)
        self.total.unsent(expected)
        self._check_drained()

    def received(
        self, session: Session, now_ns: int, latency: float | None, *, observer: bool
    ) -> None:
        now = now_ns / 1e9
        session.stats.received(now, latency, observer=observer)
        self.total.received(now, latency, observer=observer)
        if latency is not None:
            self.run_latency.observe(now, latency)
        self._check_drained()

    def _check_drained(self) -> None:
        total = self.total
        if self._draining and total.missing == 0 and total.delivered_observers >= total.published:
            self._drained.set()

    # -- reading ---------------------------------------------------------------------------

    def rows(self, now: float) -> tuple[list[TrafficRow], TrafficRow]:
        """One row per session and the total, over the sliding window ending at ``now``."""
        return [session.stats.row(now) for session in self.sessions], self.total.row(now)
