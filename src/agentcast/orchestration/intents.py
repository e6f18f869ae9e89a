"""Intents: the only way a workflow handler acts on the world.

A handler is a pure function of ``(state, event)``; it returns the new state and a list of
intents. The engine turns intents into instance changes (timers, expectations, the
compensation stack, the status) and into :class:`Outgoing` messages, which the store writes
to the transactional outbox in the same transaction as the new state. Nothing is published
until that transaction commits, and whatever commits is published at least once.

Intents are frozen values with a canonical JSON form (:func:`intent_to_json`), so a
registered compensation can be kept in the instance record and a replay can compare the
intents of two runs byte for byte.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentcast.protocol.topics import validate_pattern, validate_topic

JSON = Any

MAX_TIMER_SECONDS = 366 * 86_400.0


def _headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("headers must map strings to strings")
    return dict(headers)


def _name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"{what} must be a non-empty string of at most 200 characters")
    return name


def _seconds(value: object, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_TIMER_SECONDS
    ):
        raise ValueError(f"{what} must be between 0 and {MAX_TIMER_SECONDS:g} seconds")
    return float(value)


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` to the exact ``topic`` (with ``headers``)."""

    topic: str
    payload: JSON = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_topic(self.topic)
        object.__setattr__(self, "headers", _headers(self.headers))


@dataclass(frozen=True, slots=True)
class Command:
    """Send the command ``name`` with ``args`` to the agents consuming ``topic`` (usually a
    consumer group of agents; see :class:`~agentcast.orchestration.agent.AgentWorker`).

    The command is an event on ``topic`` with headers ``command`` (the name) and
    ``reply_to`` (where the agent reports the result; default: the workflow's
    ``reply_topic``, if it has one).
    """

    topic: str
    name: str
    args: JSON = None
    reply_to: str | None = None

    def __post_init__(self) -> None:
        validate_topic(self.topic)
        _name(self.name, "command name")
        if self.reply_to is not None:
            validate_topic(self.reply_to)


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Fire the timer ``name`` ``after`` seconds after the time of the event being handled
    (restarting a running timer of that name moves it). On expiry the workflow's
    ``on_timer(name)`` handler runs with an event of topic ``$timer.<name>`` whose payload
    is ``payload``."""

    name: str
    after: float
    payload: JSON = None

    def __post_init__(self) -> None:
        _name(self.name, "timer name")
        object.__setattr__(self, "after", _seconds(self.after, "timer delay"))


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Stop the timer ``name`` (nothing happens if it is not running)."""

    name: str


@dataclass(frozen=True, slots=True)
class Expect:
    """Expect an event whose topic matches ``pattern`` within ``within`` seconds.

    The next event of this instance whose topic matches satisfies the expectation (before
    the event's own handlers run). If none comes in time, the workflow's ``on_expired(name)``
    handler runs with an event of topic ``$expired.<name>``, or, without such a handler, the
    instance fails and its compensations run.
    """

    name: str
    pattern: str
    within: float

    def __post_init__(self) -> None:
        _name(self.name, "expectation name")
        validate_pattern(self.pattern)
        object.__setattr__(self, "within", _seconds(self.within, "expectation window"))


@dataclass(frozen=True, slots=True)
class Compensate:
    """Register ``actions`` (publishes and commands) that undo a step, under ``name``.

    On failure the registered compensations run in reverse order of registration, each at
    most once; registering a name again replaces the earlier entry in place.
    """

    name: str
    actions: Sequence[Publish | Command]

    def __post_init__(self) -> None:
        _name(self.name, "compensation name")
        actions = tuple(self.actions)
        if not all(isinstance(a, Publish | Command) for a in actions):
            raise ValueError("compensation actions must be Publish or Command intents")
        object.__setattr__(self, "actions", actions)


@dataclass(frozen=True, slots=True)
class Discard:
    """Forget the compensation ``name`` (its step no longer needs undoing)."""

    name: str


@dataclass(frozen=True, slots=True)
class Fail:
    """End the instance as failed: its compensations run in reverse order, its timers and
    expectations stop."""

    reason: str


@dataclass(frozen=True, slots=True)
class Complete:
    """End the instance as completed: timers, expectations and compensations are dropped."""


Intent = (
    Publish | Command | StartTimer | CancelTimer | Expect | Compensate | Discard | Fail | Complete
)


def intent_to_json(intent: Intent) -> dict[str, JSON]:
    """The canonical JSON object of an intent (``kind`` plus its fields)."""
    match intent:
        case Publish(topic, payload, headers):
            return {"kind": "publish", "topic": topic, "payload": payload, "headers": headers}
        case Command(topic, name, args, reply_to):
            return {
                "kind": "command",
                "topic": topic,
                "name": name,
                "args": args,
                "reply_to": reply_to,
            }
        case StartTimer(name, after, payload):
            return {"kind": "start_timer", "name": name, "after": after, "payload": payload}
        case CancelTimer(name):
            return {"kind": "cancel_timer", "name": name}
        case Expect(name, pattern, within):
            return {"kind": "expect", "name": name, "pattern": pattern, "within": within}
        case Compensate(name, actions):
            actions_json = [intent_to_json(a) for a in actions]
            return {"kind": "compensate", "name": name, "actions": actions_json}
        case Discard(name):
            return {"kind": "discard", "name": name}
        case Fail(reason):
            return {"kind": "fail", "reason": reason}
        case Complete():
            return {"kind": "complete"}
    raise TypeError(f"not an intent: {intent!r}")


def action_from_json(data: Mapping[str, JSON]) -> Publish | Command:
    """Rebuild a compensation action from :func:`intent_to_json`'s form."""
    kind = data.get("kind")
    if kind == "publish":
        return Publish(data["topic"], data.get("payload"), data.get("headers") or {})
    if kind == "command":
        return Command(data["topic"], data["name"], data.get("args"), data.get("reply_to"))
    raise ValueError(f"not a compensation action: {kind!r}")
