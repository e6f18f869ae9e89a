"""A client-side subscription: a bounded local buffer of events and its async iterator,
with the stream position, dedupe window and recovery state of its topic."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Protocol

from agentcast.client.dedupe import DEFAULT_DEDUPE_WINDOW, IdWindow
from agentcast.client.feed import EndError, Feed
from agentcast.errors import ClientError, ConnectionClosed
from agentcast.protocol.commands import Position
from agentcast.protocol.envelope import Envelope
from agentcast.protocol.topics import is_pattern

DEFAULT_BUFFER_SIZE = 10_000

# Orders position updates across subscriptions (which one saw its topic last).
_updates = itertools.count(1)


class SubscriptionOwner(Protocol):
    """What a :class:`Subscription` needs from the client that created it."""

    async def _release(self, subscription: Subscription) -> None:
        """Forget ``subscription`` and tell the node when no other local one needs it."""


def as_position(value: Position | Mapping[str, Any]) -> Position:
    """A :class:`~agentcast.protocol.commands.Position` from itself or a mapping
    ``{"epoch": str, "seq": int >= 0}``; raises ``ValueError`` for anything else."""
    if isinstance(value, Position):
        return value
    if isinstance(value, Mapping):
        epoch, seq = value.get("epoch"), value.get("seq")
        if (
            isinstance(epoch, str)
            and isinstance(seq, int)
            and not isinstance(seq, bool)
            and seq >= 0
        ):
            return Position(epoch, seq)
    raise ValueError(f"a position is {{'epoch': str, 'seq': int >= 0}}, not {value!r}")


class Subscription(Feed[Envelope]):
    """Events of one topic pattern, delivered in the order the connection received them.

    The client's reader appends every event whose topic matches :attr:`pattern` to a local
    buffer of at most ``buffer_size`` events and never waits for the consumer: when the
    buffer is full the oldest event is dropped and counted in :attr:`dropped`.

    **Dedupe.** An event whose envelope ``id`` is among the last ``dedupe_window`` ids this
    subscription accepted is skipped and counted in :attr:`duplicates`, so a replay that
    overlaps events already delivered (a resume, a second history subscribe on the same
    topic) never yields an event twice. ``dedupe_window=0`` turns this off.

    **Position.** On an exact topic, :attr:`position` is the ``(epoch, seq)`` of the last
    event accepted (it only moves forward within an epoch), or the position the node
    reported when it could not recover one (see :attr:`recovered`); ``None`` until known.
    The client resumes from it after a reconnect. Wildcard subscriptions keep no position.

    **Recovery.** :attr:`recovered` is ``None`` until the node answered a request with
    history (``since``, ``last``, ``since_time``, or a resume after a reconnect); then it is
    the latest answer: ``True`` when nothing was missed, ``False`` when the position was
    gone (older than retention, or another epoch) and the topic's gap policy applied.
    :attr:`gaps` counts the ``False`` answers.

    Consume with ``async for event in sub`` or ``await sub.get()``. Buffered events are always
    handed out before the end is reported. The end comes as:

    * :meth:`unsubscribe` or ``Client.close()``: ``async for`` stops; :meth:`get` raises
      :class:`~agentcast.errors.ClientError` (code ``not_subscribed``) or
      :class:`~agentcast.errors.ConnectionClosed` (close code 1000) respectively;
    * the connection closed for good (a close code that forbids reconnecting, or reconnecting
      gave up): both raise :class:`~agentcast.errors.ConnectionClosed` with the close code;
    * the node refused the subscription when it was renewed after a reconnect: both raise
      that :class:`~agentcast.errors.ClientError` (``position_lost`` when the topic's gap
      policy is ``refuse`` and the position is gone).
    """

    def __init__(
        self,
        owner: SubscriptionOwner,
        pattern: str,
        *,
        policy: str | None = None,
        key_header: str = "key",
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        since: Position | None = None,
        last: int | None = None,
        since_time: str | None = None,
        dedupe_window: int = DEFAULT_DEDUPE_WINDOW,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if sum(option is not None for option in (since, last, since_time)) > 1:
            raise ValueError("use at most one of since, last and since_time")
        super().__init__()
        self.pattern = pattern
        self.exact = not is_pattern(pattern)
        self.policy = policy
        self.key_header = key_header
        self.buffer_size = buffer_size
        self.since = since
        self.last = last
        self.since_time = since_time
        self.dropped = 0
        self.duplicates = 0
        self.gaps = 0
        self.recovered: bool | None = None
        self.position: Position | None = None
        self.durable: bool | None = None  # False once the node said the topic is not durable
        self.confirmed = False
        self.position_update = 0  # orders position updates across subscriptions
        self._owner = owner
        self._seen = IdWindow(dedupe_window)

    # -- state -------------------------------------------------------------------------

    @property
    def resumable(self) -> bool:
        """Whether a ``hello`` resume can restore it: an exact topic with a known position
        that is not known to be ephemeral, and default options (a resume subscribes with
        the node's default policy)."""
        return (
            self.exact
            and self.position is not None
            and self.durable is not False
            and self.policy in (None, "disconnect")
        )

    def command(self, *, history: bool = True) -> dict[str, Any]:
        """The ``subscribe`` command (without ``id``) that (re)creates this subscription;
        with ``history`` it carries the ``since``/``last``/``since_time`` it was created
        with."""
        command: dict[str, Any] = {
            "cmd": "subscribe",
            "topic": self.pattern,
            "key_header": self.key_header,
        }
        if self.policy is not None:
            command["policy"] = self.policy
        if history:
            if self.since is not None:
                command["since"] = {"epoch": self.since.epoch, "seq": self.since.seq}
            elif self.last is not None:
                command["last"] = self.last
            elif self.since_time is not None:
                command["since_time"] = self.since_time
        return command

    def resume_command(self, position: Position) -> dict[str, Any]:
        """The ``subscribe`` command that renews this subscription from ``position``."""
        command = self.command(history=False)
        command["since"] = {"epoch": position.epoch, "seq": position.seq}
        return command

    # -- called by the client ------------------------------------------------------------

    def deliver(self, event: Envelope) -> None:
        """Buffer ``event`` without blocking, unless it is a duplicate; drop the oldest
        buffered event when the buffer is full."""
        if self._ended:
            return
        if not self._seen.add(event.id):
            self.duplicates += 1
            return
        if self.exact:
            self.advance(Position(event.epoch, event.seq))
        buffer = self._buffer
        if len(buffer) >= self.buffer_size:
            buffer.popleft()
            self.dropped += 1
        self._push(event)

    def advance(self, position: Position) -> None:
        """Move :attr:`position` to ``position`` if it is later: another epoch, or a higher
        ``seq`` in the same one."""
        current = self.position
        if current is None or current.epoch != position.epoch or position.seq > current.seq:
            self.position = position
            self.position_update = next(_updates)

    def apply_history_reply(self, result: Any, *, since: Position | None) -> None:
        """Take in the node's answer to a request with history (a ``subscribe`` reply or a
        ``hello`` resume entry): ``{"recovered", "epoch", "seq"}``.

        ``since`` is the position the request resumed from, if any. When it was recovered,
        the replay continues from it (without ``since``, from the node's position at the
        reply); when it was not, the position becomes the node's current one (the gap
        policy decided what is sent) and the gap is counted.
        """
        if not isinstance(result, Mapping) or "recovered" not in result:
            return
        self.durable = True
        recovered = bool(result["recovered"])
        self.recovered = recovered
        epoch, seq = result.get("epoch"), result.get("seq")
        if recovered:
            if since is not None:
                self.advance(since)
            elif isinstance(seq, int) and not isinstance(seq, bool):
                # `last`/`since_time`: live events start after the node's position now, so
                # a reconnect resumes from there even before the first event arrives (an
                # empty topic has no epoch yet: seq 0 means "nothing seen").
                self.advance(Position(epoch if isinstance(epoch, str) else "", seq))
            return
        self.gaps += 1
        if isinstance(epoch, str) and isinstance(seq, int) and not isinstance(seq, bool):
            self.advance(Position(epoch, seq))

    def end(self, error: EndError | None = None, *, reason: EndError | None = None) -> None:
        """Stop delivery; the consumer still gets the buffered events first.

        With ``error`` both ``async for`` and :meth:`get` raise it (a failure). Without,
        ``async for`` stops and :meth:`get` raises ``reason`` (a requested end).
        """
        if self._ended:
            return
        self._finish(error, reason or unsubscribed(self.pattern))

    # -- consumer API (and :meth:`get`, ``async for`` from :class:`Feed`) ------------------

    def get_nowait(self) -> Envelope | None:
        """The next buffered event, or ``None`` if the buffer is empty (the end is not raised)."""
        return self._buffer.popleft() if self._buffer else None

    async def unsubscribe(self) -> None:
        """End this subscription and tell the node, unless another local subscription of the
        same client holds the same pattern. Idempotent; buffered events can still be read."""
        await self._owner._release(self)

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        where = "" if self.position is None else f" at {self.position.epoch}:{self.position.seq}"
        return f"<Subscription {self.pattern!r} {state}{where} pending={self.pending}>"


def unsubscribed(pattern: str) -> ClientError:
    """The end reason of a subscription ended by ``unsubscribe()``."""
    return ClientError(f"unsubscribed from {pattern!r}", code="not_subscribed")


def client_closed() -> ConnectionClosed:
    """The end reason of everything pending when ``Client.close()`` ran."""
    return ConnectionClosed("the client was closed", close_code=1000)
