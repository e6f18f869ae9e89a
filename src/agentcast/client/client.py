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

:class:`Client` is the facade over its parts: :mod:`~agentcast.client.session` (the state
they share), :mod:`~agentcast.client.publisher` (publish, retry, resend),
:mod:`~agentcast.client.subscriber` (subscribe, join, release),
:mod:`~agentcast.client.router` (replies, events, group deliveries),
:mod:`~agentcast.client.opener` (one connection and its session) and
:mod:`~agentcast.client.supervisor` (connect, keepalive, reconnect, end).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from agentcast.client.backoff import Backoff
from agentcast.client.dedupe import DEFAULT_DEDUPE_WINDOW
from agentcast.client.groups import GroupRegistry, GroupSubscription
from agentcast.client.link import Link
from agentcast.client.opener import ConnectionOpener
from agentcast.client.publisher import Publisher
from agentcast.client.registry import SubscriptionRegistry
from agentcast.client.results import PublishAck
from agentcast.client.router import MessageRouter
from agentcast.client.session import Session
from agentcast.client.subscriber import Subscriber
from agentcast.client.subscription import DEFAULT_BUFFER_SIZE, Subscription, as_position
from agentcast.client.supervisor import ConnectionSupervisor
from agentcast.client.worker import GroupHandler, Worker
from agentcast.protocol.commands import Policy, Position

DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_RECONNECT_ATTEMPTS = 100


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
        backoff = Backoff(backoff_initial, backoff_max)
        # The parts read the options above from this client whenever they use one.
        session = self._session = Session(self)
        self._subscriptions = SubscriptionRegistry()
        self._groups = GroupRegistry()
        self._publisher = Publisher(session, backoff)
        self._subscriber = Subscriber(session, self._subscriptions, self._groups)
        router = MessageRouter(session, self._subscriptions, self._groups)
        self._opener = ConnectionOpener(
            session, router, self._publisher, self._subscriptions, self._groups
        )
        # Connections are opened through ``self._open``, looked up at each use.
        self._supervisor = ConnectionSupervisor(
            session,
            lambda: self._open(),
            backoff,
            self._publisher,
            self._subscriptions,
            self._groups,
        )

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a session is established (``hello`` answered, subscriptions renewed)."""
        return self._session.established is not None

    @property
    def connection_id(self) -> str | None:
        """The node's id for the current (or last) connection."""
        return self._session.connection_id

    @property
    def node_id(self) -> str | None:
        """The id of the node of the current (or last) connection."""
        return self._session.node_id

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The live subscriptions, in subscribe order."""
        return tuple(self._subscriptions)

    @property
    def groups(self) -> tuple[GroupSubscription, ...]:
        """The live consumer-group memberships, in join order."""
        return tuple(self._groups)

    @property
    def lamport(self) -> int:
        """The Lamport clock: the highest Lamport time seen in any event or reply."""
        return self._session.lamport

    @lamport.setter
    def lamport(self, value: int) -> None:
        self._session.lamport = value

    @property
    def reconnects(self) -> int:
        """Successful reconnects so far."""
        return self._supervisor.reconnects

    @reconnects.setter
    def reconnects(self, value: int) -> None:
        self._supervisor.reconnects = value

    @property
    def publish_retries(self) -> int:
        """Publishes sent again after an ``overloaded`` or ``unavailable`` refusal."""
        return self._publisher.retries

    @publish_retries.setter
    def publish_retries(self, value: int) -> None:
        self._publisher.retries = value

    @property
    def _link(self) -> Link | None:
        """The current connection (``None`` between connections)."""
        return self._session.link

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and the session; raise if that fails (no retry here).

        Raises :class:`~agentcast.errors.ClientError` if the node refuses ``hello``,
        :class:`TimeoutError` if it does not answer within ``ack_timeout``, and ``OSError`` or a
        ``websockets`` error if the socket cannot be opened.
        """
        await self._supervisor.connect()

    async def close(self) -> None:
        """End the session: stop the supervisor and reader, close the socket, fail what waits.

        Waiting commands raise :class:`~agentcast.errors.ConnectionClosed` (close code 1000);
        subscription iterators stop after their buffered events. Idempotent.
        """
        await self._supervisor.close()

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
        return await self._publisher.publish(
            topic,
            payload,
            headers=headers,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
            causation_id=causation_id,
            ack=ack,
        )

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
        deadline = self._deadline()
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
        await self._subscriber.subscribe(sub, deadline)
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
        await self._subscriber.join(membership, deadline)
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
        result = await self._session.call({"cmd": "ping"}, self._deadline())
        return str(result.get("time", "")) if isinstance(result, dict) else ""

    # -- for the parts and the objects this client hands out -------------------------------

    def _deadline(self) -> float:
        """The loop time by which a command sent now must be answered."""
        return self._session.deadline()

    def _check_usable(self) -> None:
        self._supervisor.check_usable()

    async def _open(self) -> None:
        """Open one connection and restore the session on it (connect and every reconnect)."""
        await self._opener.open()

    async def _release(self, sub: Subscription) -> None:
        """End ``sub``; unsubscribe on the node unless another live one has its pattern."""
        await self._subscriber.release(sub)

    async def _leave_group(self, membership: GroupSubscription) -> None:
        """End ``membership``; tell the node the connection leaves the group."""
        await self._subscriber.leave(membership)
