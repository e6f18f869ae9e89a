"""The asyncio client of agentcast: one session over protocol v1, reconnecting by itself.

Contracts:

* **Acks.** ``await client.publish(...)`` returns a :class:`PublishAck` once the node has
  accepted and sequenced the event (its ``(epoch, seq)`` position is assigned and it was handed
  to the subscribers connected then). Ephemeral topics keep no history, so delivery to
  subscribers is at-most-once: a subscriber that is disconnected at that moment misses it.
  On a durable topic the ack also means the node's history store committed the event.
* **Idempotency.** Every publish carries an idempotency key (the caller's, or a random one).
  A publish still waiting for its ack when the connection drops is sent again, with the same
  key and in the original order, once the client has reconnected; the node's dedupe window
  answers a resend it has already sequenced with the original position and
  ``duplicate=True``. On ephemeral topics a node restart empties that window, so a publish in
  flight across a restart can be delivered twice; durable topics keep the keys in the store.
  An ``overloaded`` or ``unavailable`` refusal is retried with backoff and the same key until
  ``ack_timeout`` (then the refusal is raised); other refusals are raised at once.
* **Reconnect.** When the connection drops and the close code allows it
  (:func:`~agentcast.protocol.codes.should_reconnect`), the client reconnects with exponential
  backoff and full jitter, then restores the session (see :mod:`agentcast.client.restore`):
  the ``hello`` resumes every exact topic whose position is known from that position (the
  node replays what was missed, then goes live), the other subscriptions are renewed with
  their options right behind it, and then the unacknowledged publishes are resent. Events of
  ephemeral topics published while the client was away are not replayed. Commands issued
  meanwhile wait for the reconnect, bounded by ``ack_timeout``.
* **At-least-once, deduplicated.** On durable topics every event committed after a
  subscription's position reaches it, across reconnects and node restarts, unless the node
  reports a gap (``sub.recovered is False``: the position was older than retention or the
  history was lost, counted in ``sub.gaps``). Each subscription drops events whose id it has
  already delivered within its dedupe window. For effectively-once processing, see
  :mod:`agentcast.client.idempotent`.
* **Failure.** A close code that forbids reconnecting, an exhausted reconnect budget, or a
  refused ``hello`` ends the client: waiting commands and subscriptions fail with
  :class:`~agentcast.errors.ConnectionClosed`. After :meth:`Client.close` waiting commands fail
  the same way and subscription iterators simply stop.
* **Consumer groups.** :meth:`Client.join_group` makes the connection a member of a
  consumer group: deliveries are at-least-once and must be acked (see
  :mod:`agentcast.client.groups`); :meth:`Client.work` runs a handler over them (see
  :mod:`agentcast.client.worker`). After a reconnect every group is joined again.
* **Ordering.** Events reach each :class:`Subscription` in the order the connection received
  them, which keeps every topic in ``seq`` order.
* **Lamport.** :attr:`Client.lamport` is the highest Lamport time seen in any event or reply;
  every publish sends it, so the node's clock (and thus the next event) moves past it.
* **Concurrency.** One reader task per connection and one supervisor task (keepalive and
  reconnect) are owned by the client; :meth:`Client.close` cancels and awaits both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from agentcast.client.backoff import Backoff
from agentcast.client.dedupe import DEFAULT_DEDUPE_WINDOW
from agentcast.client.groups import GroupRegistry, GroupSubscription, left
from agentcast.client.inflight import InflightPublishes, PendingPublish
from agentcast.client.link import Link, LinkLost
from agentcast.client.messages import GroupEvent, MalformedMessage, Reply, decode_server_message
from agentcast.client.registry import SubscriptionRegistry
from agentcast.client.restore import RestorePlan
from agentcast.client.results import PublishAck
from agentcast.client.subscription import (
    DEFAULT_BUFFER_SIZE,
    Subscription,
    as_position,
    client_closed,
    renew,
    unsubscribed,
)
from agentcast.client.worker import GroupHandler, Worker
from agentcast.errors import ClientError, ConnectionClosed
from agentcast.protocol.codes import should_reconnect
from agentcast.protocol.commands import PROTOCOL_VERSION, Policy, Position
from agentcast.protocol.envelope import Envelope

log = logging.getLogger("agentcast.client")

DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_RECONNECT_ATTEMPTS = 100

# Failures of one connection attempt that a later attempt may not hit.
_RETRYABLE = (OSError, TimeoutError, WebSocketException, LinkLost)

# Publish refusals that may pass: retried with backoff and the same idempotency key.
RETRYABLE_PUBLISH_CODES = frozenset({"overloaded", "unavailable"})


class Client:
    """An agentcast session: publish, subscribe, and stay connected.

    ``Client(url, ...)`` does no I/O; :meth:`connect` (or ``async with``) opens the session.
    ``ack_timeout`` bounds every command from the call to its reply, including any wait for a
    reconnect; ``connect_timeout`` bounds each WebSocket opening handshake (and closing one).
    ``max_reconnect_attempts`` bounds how many connection attempts one outage may take, and
    ``max_message_bytes`` the size of one server message. A client is used for one session:
    after :meth:`close` (or a terminal failure) create a new one.

    Public state: :attr:`connected`, :attr:`connection_id`, :attr:`node_id`, :attr:`lamport`
    (the Lamport clock), :attr:`reconnects` (successful reconnects so far),
    :attr:`publish_retries` (publishes sent again after ``overloaded``/``unavailable``),
    :attr:`subscriptions` and :attr:`groups`.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        token: str | None = None,
        reconnect: bool = True,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        ack_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        max_reconnect_attempts: int = DEFAULT_MAX_RECONNECT_ATTEMPTS,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if max_reconnect_attempts < 1:
            raise ValueError("max_reconnect_attempts must be at least 1")
        self.url = url
        self.name = name
        self.token = token
        self.reconnect = reconnect
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.max_reconnect_attempts = max_reconnect_attempts
        self.max_message_bytes = max_message_bytes
        self.lamport = 0
        self.reconnects = 0
        self.publish_retries = 0
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._ids = itertools.count(1)
        self._generations = itertools.count(1)
        self._link: Link | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._subscriptions = SubscriptionRegistry()
        self._groups = GroupRegistry()
        self._inflight = InflightPublishes()
        self._state_changed = asyncio.Event()
        self._failure: ConnectionClosed | None = None
        self._started = False
        self._closing = False
        self._closed = asyncio.Event()
        self._last_connection_id: str | None = None
        self._last_node_id: str | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a session is established (``hello`` answered, subscriptions renewed)."""
        link = self._link
        return link is not None and link.ready and link.alive

    @property
    def connection_id(self) -> str | None:
        """The node's id for the current (or last) connection."""
        return self._last_connection_id

    @property
    def node_id(self) -> str | None:
        """The id of the node of the current (or last) connection."""
        return self._last_node_id

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The live subscriptions, in subscribe order."""
        return tuple(self._subscriptions)

    @property
    def groups(self) -> tuple[GroupSubscription, ...]:
        """The live consumer-group memberships, in join order."""
        return tuple(self._groups)

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and the session; raise if that fails (no retry here).

        Raises :class:`~agentcast.errors.ClientError` if the node refuses ``hello``,
        :class:`TimeoutError` if it does not answer within ``ack_timeout``, and ``OSError`` or a
        ``websockets`` error if the socket cannot be opened.
        """
        if self._closing:
            raise client_closed()
        if self._started:
            raise RuntimeError("connect() was already called")
        self._started = True
        try:
            await self._open()
        except LinkLost as exc:
            self._started = False
            raise ConnectionClosed(f"the connection closed during hello: {exc}") from None
        except BaseException:
            self._started = False
            raise
        if self._closing:  # close() ran while the session was being opened
            link = self._link
            if link is not None:
                await link.shutdown()
                self._link = None
            raise client_closed()
        self._supervisor = asyncio.create_task(self._supervise(), name="agentcast-client")

    async def close(self) -> None:
        """End the session: stop the supervisor and reader, close the socket, fail what waits.

        Waiting commands raise :class:`~agentcast.errors.ConnectionClosed` (close code 1000);
        subscription iterators stop after their buffered events. Idempotent.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            supervisor, self._supervisor = self._supervisor, None
            if supervisor is not None:
                supervisor.cancel()
                await asyncio.wait({supervisor})
                if not supervisor.cancelled() and supervisor.exception() is not None:
                    log.error("agentcast client supervisor failed", exc_info=supervisor.exception())
            link = self._link
            if link is not None:
                await link.shutdown()
                self._link = None
        finally:
            self._terminate(client_closed(), graceful=True)
            self._closed.set()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- commands --------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        ack: bool = True,
    ) -> PublishAck | None:
        """Publish one event to the exact ``topic``.

        With ``ack=True`` return the node's :class:`PublishAck` (see the module contract); the
        publish is resent after a reconnect until acked, so give an ``idempotency_key`` of
        your own if you may retry it yourself after a :class:`TimeoutError`. With
        ``ack=False`` return ``None`` once the command was written to the socket: no ack, no
        resend, at-most-once, and a refusal is only logged.

        An ``overloaded`` or ``unavailable`` refusal (a durable topic whose store is busy or
        failed) is retried with backoff and the same idempotency key while ``ack_timeout``
        allows; a retried publish may land after publishes issued later.

        Raises :class:`~agentcast.errors.ClientError` with the node's code (``invalid_topic``,
        ``wildcard_publish``, ``payload_too_large``, and ``overloaded``/``unavailable`` once
        retrying would pass ``ack_timeout``), :class:`TimeoutError` after ``ack_timeout``,
        :class:`~agentcast.errors.ConnectionClosed` when the client ended.
        """
        self._check_usable()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        command: dict[str, Any] = {
            "cmd": "publish",
            "topic": topic,
            "payload": payload,
            "idempotency_key": idempotency_key or uuid.uuid4().hex,
        }
        if headers:
            command["headers"] = dict(headers)
        if correlation_id is not None:
            command["correlation_id"] = correlation_id
        if causation_id is not None:
            command["causation_id"] = causation_id
        if not ack:
            command["ack"] = False
            await self._send_unacked(command, deadline)
            return None
        pending = PendingPublish(command)
        token = self._inflight.add(pending)
        retry = Backoff(self._backoff.initial, self._backoff.maximum)
        try:
            while True:
                # Once a link is ready, the reconnect has resent every older pending publish:
                # sending now keeps the original order. If this one was resent too, skip it.
                link = await self._wait_link(deadline)
                if pending.generation != link.generation and not pending.future.done():
                    with contextlib.suppress(LinkLost):  # if lost, the next link resends it
                        await self._transmit(link, pending)
                try:
                    async with asyncio.timeout_at(deadline):
                        result = await pending.future
                    break
                except ClientError as exc:
                    if exc.code not in RETRYABLE_PUBLISH_CODES:
                        raise
                    delay = retry.next_delay()
                    if loop.time() + delay >= deadline:
                        raise
                    await asyncio.sleep(delay)
                    self.publish_retries += 1
                    pending.renew()
        finally:
            self._inflight.remove(token)
        return PublishAck.from_result(result)

    async def subscribe(
        self,
        pattern: str,
        *,
        policy: Policy | str | None = None,
        key_header: str = "key",
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        since: Position | Mapping[str, Any] | None = None,
        last: int | None = None,
        since_time: str | None = None,
        dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
    ) -> Subscription:
        """Subscribe to an exact topic or a wildcard pattern; return once the node confirmed.

        ``policy`` is the node-side slow-consumer policy (``disconnect`` by default,
        ``drop_oldest``, ``drop_newest``, ``latest_per_key`` with ``key_header``);
        ``buffer_size`` bounds the local buffer (the oldest event is dropped when full). Two
        local subscriptions may overlap or even share a pattern: each gets every matching
        event (the node holds one subscription per pattern, with the latest options).

        History (durable exact topics only; at most one of them): ``since`` (a
        :class:`~agentcast.protocol.commands.Position` or ``{"epoch", "seq"}``, the last
        position already seen) replays everything after it, ``last`` the last N retained
        events, ``since_time`` (RFC 3339) the events from that time on; live events follow
        with no gap and no duplicate. The node's answer is in :attr:`Subscription.recovered`
        and :attr:`Subscription.position`. ``dedupe_window`` is how many recent event ids the
        subscription remembers to drop duplicates (0: none).

        Raises :class:`~agentcast.errors.ClientError` (``invalid_topic``,
        ``too_many_subscriptions``, ``not_durable``, ``unsupported`` (history on a pattern),
        ``position_lost``, ...), :class:`TimeoutError`,
        :class:`~agentcast.errors.ConnectionClosed`, or ``ValueError`` for a malformed
        ``since`` or several history options.
        """
        self._check_usable()
        deadline = asyncio.get_running_loop().time() + self.ack_timeout
        position = None if since is None else as_position(since)
        sub = Subscription(
            self,
            pattern,
            policy=None if policy is None else str(policy),
            key_header=key_header,
            buffer_size=buffer_size,
            since=position,
            last=last,
            since_time=since_time,
            dedupe_window=dedupe_window,
        )
        self._subscriptions.add(sub)
        try:
            result = await self._call(sub.command(), deadline)
        except BaseException:
            self._subscriptions.discard(sub)
            sub.end(reason=unsubscribed(pattern))
            raise
        sub.apply_history_reply(result, since=position)
        sub.confirmed = True
        return sub

    async def join_group(
        self,
        topic: str,
        group: str,
        *,
        ack_timeout: float | None = None,
        max_deliver: int | None = None,
        max_in_flight: int | None = None,
        key_header: str = "key",
        dead_letter_topic: str | None = None,
    ) -> GroupSubscription:
        """Join the consumer group ``group`` of the durable exact ``topic``; return once the
        node confirmed.

        The options apply when this join creates the group on the node (unset ones take the
        node's defaults); a group that exists keeps its settings, reported in
        :attr:`GroupSubscription.info`. ``ack_timeout`` (seconds) is how long a delivery may
        stay unacked before the node redelivers it, ``max_deliver`` the attempts before an
        event goes to ``dead_letter_topic`` (default ``<tenant>.dead-letter.<group>``),
        ``max_in_flight`` the unacked deliveries per member, and events sharing a value of
        the ``key_header`` header are never in flight together. See
        :mod:`agentcast.client.groups` for the delivery contract.

        Raises :class:`~agentcast.errors.ClientError` (``not_durable``, ``unsupported`` for a
        pattern, ``bad_request``, ``invalid_topic``, ...), :class:`TimeoutError`,
        :class:`~agentcast.errors.ConnectionClosed`, or ``ValueError`` if this client is
        already a member of that group.
        """
        self._check_usable()
        deadline = self._deadline()
        membership = GroupSubscription(
            self,
            topic,
            group,
            ack_timeout=ack_timeout,
            max_deliver=max_deliver,
            max_in_flight=max_in_flight,
            key_header=key_header,
            dead_letter_topic=dead_letter_topic,
        )
        self._groups.add(membership)
        try:
            result = await self._call(membership.command(), deadline)
        except BaseException:
            self._groups.discard(membership)
            membership.end(reason=left(topic, group))
            raise
        membership.joined(result)
        return membership

    async def work(
        self,
        topic: str,
        group: str,
        handler: GroupHandler,
        *,
        concurrency: int = 1,
        **options: Any,
    ) -> None:
        """Run ``handler`` for every delivery of the group until cancelled or the client
        ends: ``await Worker(self, topic, group, handler, concurrency=..., **options).run()``;
        see :class:`~agentcast.client.worker.Worker` for the options and the contract (ack
        on success, nack with an exponential delay on failure)."""
        worker = Worker(self, topic, group, handler, concurrency=concurrency, **options)
        await worker.run()

    async def ping(self) -> str:
        """Round-trip a ``ping``; return the node's time (RFC 3339)."""
        self._check_usable()
        deadline = asyncio.get_running_loop().time() + self.ack_timeout
        result = await self._call({"cmd": "ping"}, deadline)
        return str(result.get("time", "")) if isinstance(result, dict) else ""

    async def _release(self, sub: Subscription) -> None:
        """End ``sub``; unsubscribe on the node unless another live one has its pattern."""
        if sub not in self._subscriptions:
            sub.end(reason=unsubscribed(sub.pattern))
            return
        self._subscriptions.discard(sub)
        sub.end(reason=unsubscribed(sub.pattern))
        if self._subscriptions.holds(sub.pattern):
            return
        link = self._link
        if link is None or not link.ready or not link.alive:
            return  # the next connection does not renew it
        try:
            await link.request({"cmd": "unsubscribe", "topic": sub.pattern}, self._deadline())
        except LinkLost:
            return
        except ClientError as exc:
            if exc.code != "not_subscribed":
                raise

    async def _leave_group(self, membership: GroupSubscription) -> None:
        """End ``membership``; tell the node the connection leaves the group."""
        reason = left(membership.topic, membership.group)
        if membership not in self._groups:
            membership.end(reason=reason)
            return
        self._groups.discard(membership)
        membership.end(reason=reason)
        link = self._link
        if link is None or not link.ready or not link.alive:
            return  # the node dropped the membership with the connection
        command = {"cmd": "unsubscribe", "topic": membership.topic, "group": membership.group}
        try:
            await link.request(command, self._deadline())
        except LinkLost:
            return
        except ClientError as exc:
            if exc.code != "not_subscribed":
                raise

    # -- sending ---------------------------------------------------------------------------

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.ack_timeout

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise renew(self._failure)
        if not self._started:
            raise RuntimeError("call connect() first")

    async def _wait_link(self, deadline: float) -> Link:
        """The current established link, waiting for a reconnect until ``deadline``."""
        async with asyncio.timeout_at(deadline):
            while True:
                if self._failure is not None:
                    raise renew(self._failure)
                link = self._link
                if link is not None and link.ready and link.alive:
                    return link
                self._state_changed.clear()
                await self._state_changed.wait()

    async def _call(self, command: dict[str, Any], deadline: float) -> Any:
        """:meth:`_request` on the current link, retried on the next one if a link is lost."""
        while True:
            link = await self._wait_link(deadline)
            try:
                return await link.request(command, deadline)
            except LinkLost:
                continue

    async def _transmit(self, link: Link, pending: PendingPublish) -> None:
        """Send (or resend) a pending publish on ``link`` with a fresh id and the current clock."""
        pending.generation = link.generation
        await link.send_resendable({**pending.command, "lamport": self.lamport}, pending.future)

    async def _send_unacked(self, command: dict[str, Any], deadline: float) -> None:
        """Write an ``ack: false`` publish once a link is ready (no resend after that)."""
        while True:
            link = await self._wait_link(deadline)
            try:
                await link.send({**command, "lamport": self.lamport})
                return
            except LinkLost:
                continue

    # -- receiving -------------------------------------------------------------------------

    def _on_message(self, link: Link, message: str | bytes) -> None:
        """Route one server message; runs in the reader task and never blocks."""
        try:
            decoded = decode_server_message(message)
        except MalformedMessage as exc:
            log.warning("agentcast client ignored a server message: %s", exc)
            return
        if isinstance(decoded, Reply):
            self._on_reply(link, decoded)
        elif isinstance(decoded, Envelope):
            if decoded.lamport > self.lamport:
                self.lamport = decoded.lamport
            self._subscriptions.route(decoded)
        elif isinstance(decoded, GroupEvent):
            if decoded.envelope.lamport > self.lamport:
                self.lamport = decoded.envelope.lamport
            self._groups.route(link, decoded)

    def _on_reply(self, link: Link, reply: Reply) -> None:
        lamport = reply.lamport
        if lamport is not None and lamport > self.lamport:
            self.lamport = lamport
        waiter = link.take(reply.id)
        if waiter is None:
            if reply.error is not None:
                log.warning(
                    "agentcast node refused a command: %s (%s)", reply.error, reply.error.code
                )
            return
        if waiter.future.done():
            return
        if reply.error is not None:
            waiter.future.set_exception(reply.error)
        else:
            waiter.future.set_result(reply.result)

    # -- connection management ---------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, say hello, renew subscriptions, resend unacked publishes, then go ready."""
        ws = await ws_connect(
            self.url,
            open_timeout=self.connect_timeout,
            close_timeout=self.connect_timeout,
            max_size=self.max_message_bytes,
            compression=None,
        )
        link = Link(ws, next(self._generations), self._ids)
        self._link = link
        link.reader = asyncio.create_task(
            link.read(self._on_message), name="agentcast-client-reader"
        )
        try:
            await self._restore_session(link)
            await self._resend_inflight(link)
            if not link.alive:
                raise LinkLost("the connection closed while the session was restored")
            link.ready = True
            self._state_changed.set()
        except BaseException:
            await link.shutdown()
            if self._link is link:
                self._link = None
            raise

    async def _restore_session(self, link: Link) -> None:
        """Say ``hello`` (resuming durable topics from their positions), renew the other
        subscriptions and join the consumer groups again right behind it, in one round trip;
        end refused subscriptions and memberships."""
        deadline = self._deadline()
        plan = RestorePlan.build(self._subscriptions.groups())
        renewals = plan.commands()
        joins = self._groups.restore_commands()
        hello_command: dict[str, Any] = {
            "cmd": "hello",
            "client": self.name,
            "token": self.token,
            "protocol": PROTOCOL_VERSION,
        }
        resume = plan.resume_field()
        if resume:
            hello_command["resume"] = resume
        # Tasks start in order and each writes its frame before it first waits, so the
        # node reads the hello first.
        hello, *outcomes = await asyncio.gather(
            link.request(hello_command, deadline),
            *(link.request(command, deadline) for command in renewals),
            *(link.request(command, deadline) for _, command in joins),
            return_exceptions=True,
        )
        if isinstance(hello, BaseException):
            raise hello
        resumed: Any = None
        if isinstance(hello, dict):
            self._last_connection_id = link.connection_id = hello.get("connection")
            self._last_node_id = link.node_id = hello.get("node")
            interval = hello.get("heartbeat_interval")
            if isinstance(interval, int | float) and interval > 0:
                link.heartbeat_interval = float(interval)
            resumed = hello.get("resume")

        async def request(command: dict[str, Any]) -> Any:
            return await link.request(command, deadline)

        await plan.finish(resumed, outcomes[: len(renewals)], request, self._subscriptions)
        self._groups.finish_restore(joins, outcomes[len(renewals) :])

    async def _resend_inflight(self, link: Link) -> None:
        """Send every unacked publish not yet sent on ``link``, oldest first.

        Publishes issued while this runs wait for the link to be ready and send themselves,
        after these.
        """
        for pending in self._inflight.unsent(link.generation):
            if not pending.future.done():
                await self._transmit(link, pending)

    async def _supervise(self) -> None:
        """Own the connection: keep it alive, notice its end, reconnect or fail the client."""
        try:
            while True:
                link = self._link
                if link is None:
                    return
                await self._watch(link)
                code, reason = link.close_code(), link.close_reason()
                self._state_changed.clear()
                await link.shutdown()
                if self._link is link:
                    self._link = None
                if not self.reconnect or not should_reconnect(code):
                    self._terminate(
                        ConnectionClosed(
                            f"the connection closed (code {code}{': ' + reason if reason else ''})",
                            close_code=code,
                        )
                    )
                    return
                if not await self._reconnect(code):
                    return
        except Exception as exc:
            log.exception("agentcast client supervisor failed")
            self._terminate(ConnectionClosed(f"the client failed: {exc!r}"))

    async def _watch(self, link: Link) -> None:
        """Wait for ``link`` to close; send a keepalive ``ping`` when it has been quiet.

        The node treats any inbound frame as liveness; a ``ping`` without ``id`` gets no
        success reply.
        """
        reader = link.reader
        assert reader is not None
        loop = asyncio.get_running_loop()
        while not reader.done():
            interval = link.heartbeat_interval
            wait = max(0.0, link.last_send + interval - loop.time())
            done, _ = await asyncio.wait({reader}, timeout=wait)
            if done:
                return
            if loop.time() - link.last_send >= interval:
                with contextlib.suppress(LinkLost):
                    await link.send({"cmd": "ping"})

    async def _reconnect(self, code: int | None) -> bool:
        """Try to reopen the session; ``False`` if the client ended instead."""
        backoff = self._backoff
        backoff.reset()
        last_error: BaseException | None = None
        for attempt in range(1, self.max_reconnect_attempts + 1):
            await asyncio.sleep(backoff.next_delay())
            try:
                await self._open()
            except ClientError as exc:
                self._terminate(
                    ConnectionClosed(
                        f"the node refused the session on reconnect: {exc.message} ({exc.code})",
                        close_code=code,
                    )
                )
                return False
            except _RETRYABLE as exc:
                last_error = exc
                log.info("agentcast client reconnect attempt %d failed: %r", attempt, exc)
                continue
            self.reconnects += 1
            log.info("agentcast client reconnected to %s after %d attempt(s)", self.url, attempt)
            return True
        self._terminate(
            ConnectionClosed(
                f"gave up reconnecting after {self.max_reconnect_attempts} attempts: "
                f"{last_error!r}",
                close_code=code,
            )
        )
        return False

    def _terminate(self, error: ConnectionClosed, *, graceful: bool = False) -> None:
        """End the client: fail waiting publishes and subscriptions, wake every waiter."""
        if self._failure is not None:
            return
        self._failure = error
        self._state_changed.set()
        self._inflight.fail_all(lambda: renew(error))
        link = self._link
        if link is not None:
            link.lost()
        self._subscriptions.end_all(error, graceful=graceful)
        self._groups.end_all(error, graceful=graceful)
