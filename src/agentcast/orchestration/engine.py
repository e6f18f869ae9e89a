"""The workflow engine: a pure state machine from (instance, input) to a transition.

Sans-I/O: no clock, no database, no network. The store hands the engine an instance
record (or ``None``) and one input; the engine runs the workflow's handlers and returns a
:class:`Decision`:

* ``apply`` with a :class:`Transition`: the instance after the input, the messages to write
  to the outbox, and the canonical bytes of the input and its effects (the instance log
  entry that replay compares);
* ``park``: the instance does not exist yet and the event matches only non-start
  triggers; the store keeps it and feeds it again right after a start event creates the
  instance (events that arrive out of order are not lost);
* ``ignore``: the input changes nothing (no trigger matches, the instance ended, or a
  wake-up is stale).

An input is an event envelope, or a wake-up: a synthetic envelope of topic
``$timer.<name>`` or ``$expired.<name>`` whose ``time`` is the due time, which the store
builds with :func:`wakeup_event`. Handlers see the event's time as the only clock, and
message ids are derived from the instance, the input id and the message's index, so the
same inputs always give the same transitions byte for byte.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from agentcast.orchestration.instance import (
    COMPLETED,
    FAILED,
    TIMER,
    Instance,
    canonical,
)
from agentcast.orchestration.intents import (
    CancelTimer,
    Command,
    Compensate,
    Complete,
    Discard,
    Expect,
    Fail,
    Intent,
    Publish,
    StartTimer,
    action_from_json,
    intent_to_json,
)
from agentcast.orchestration.workflow import (
    EXPIRED_PREFIX,
    TIMER_PREFIX,
    Handler,
    Step,
    Workflow,
)
from agentcast.protocol.envelope import Envelope
from agentcast.protocol.topics import matches
from agentcast.storage.memory import rfc3339_micros

JSON = Any

APPLY = "apply"
PARK = "park"
IGNORE = "ignore"

SOURCE = "agentcast.orchestration"
_NAMESPACE = uuid.UUID("5b0f1f4e-8d0e-4c53-9a4e-4f6a7e0c2b11")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class WorkflowError(Exception):
    """A handler broke the workflow contract (bad return value, state that is not JSON, an
    intent after the instance ended, a timer without a handler)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for the outbox: published with ``key`` (the instance key, so an
    instance's messages keep their order), ``correlation_id`` and ``causation_id`` (the
    input's id); ``headers`` carry ``workflow``, ``instance`` and a deterministic ``intent``
    id, plus ``command``/``reply_to`` for commands and ``compensation`` for undo actions."""

    topic: str
    payload: JSON
    headers: dict[str, str]
    key: str
    correlation_id: str
    causation_id: str

    def to_json(self) -> dict[str, JSON]:
        return {
            "topic": self.topic,
            "payload": self.payload,
            "headers": self.headers,
            "key": self.key,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """The instance after one input, its outbox messages, and its log entry (``input`` and
    ``effects`` are canonical JSON; ``effects`` holds the intents, the messages and the
    instance's meta)."""

    instance: Instance
    outgoing: tuple[Outgoing, ...]
    input: bytes
    effects: bytes


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one input: ``kind`` is ``apply`` (then ``transition`` is set),
    ``park`` or ``ignore``."""

    kind: str
    transition: Transition | None = None


_IGNORE = Decision(IGNORE)
_PARK = Decision(PARK)


def format_micros(micros: int) -> str:
    """RFC 3339 with microseconds and ``Z`` for microseconds since the epoch."""
    moment = _EPOCH + timedelta(microseconds=micros)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def wakeup_event(workflow: str, key: str, wakeup: str, due_us: int, payload: JSON) -> Envelope:
    """The synthetic input of the wake-up ``timer:<name>`` or ``expect:<name>`` due at
    ``due_us``; its id names the instance, the wake-up and the due time."""
    kind, _, name = wakeup.partition(":")
    topic = (TIMER_PREFIX if kind + ":" == TIMER else EXPIRED_PREFIX) + name
    return Envelope(
        id=f"{wakeup}@{due_us}",
        topic=topic,
        seq=0,
        epoch="",
        time=format_micros(due_us),
        source=SOURCE,
        payload=payload,
        correlation_id=key,
    )


class Engine:
    """Routes inputs to workflows and computes transitions (pure; see the module doc)."""

    def __init__(self, workflows: Sequence[Workflow]) -> None:
        self.workflows = {w.name: w for w in workflows}
        if len(self.workflows) != len(workflows):
            raise ValueError("workflow names must be unique")

    def topics(self) -> list[str]:
        """Every input topic of every workflow, sorted, without repeats."""
        return sorted({t for w in self.workflows.values() for t in w.topics})

    def route(self, event: Envelope) -> list[tuple[Workflow, str]]:
        """The ``(workflow, instance key)`` pairs the event is an input of."""
        targets = []
        for workflow in self.workflows.values():
            if workflow.accepts(event.topic):
                key = workflow.correlate(event)
                if key is not None:
                    targets.append((workflow, key))
        return targets

    def wakeup(self, workflow: Workflow, instance: Instance, wakeup: str) -> Envelope:
        """The synthetic input of one of the instance's scheduled wake-ups."""
        kind, _, name = wakeup.partition(":")
        if kind + ":" == TIMER:
            due, payload = instance.timers[name]
        else:
            due, payload = instance.expectations[name][1], None
        return wakeup_event(workflow.name, instance.key, wakeup, int(due), payload)

    def handle(self, workflow: Workflow, instance: Instance | None, event: Envelope) -> Decision:
        """Compute what ``event`` does to ``instance`` (``None``: it does not exist yet).

        Raises :class:`WorkflowError` (or whatever a handler raises) when the input cannot
        be applied; the instance is then unchanged.
        """
        key = instance.key if instance is not None else workflow.correlate(event)
        if key is None:
            return _IGNORE
        if event.topic.startswith("$"):
            return self._wake(workflow, instance, event)
        triggers = workflow.triggers_for(event)
        if instance is None:
            if not triggers:
                return _IGNORE
            if not any(t.start for t in triggers):
                return _PARK
            current = Instance(workflow.name, key, canonical(workflow.new_state()))
        elif not instance.running:
            return _IGNORE
        else:
            current = instance.copy()
        met = [
            n for n, (pattern, _) in current.expectations.items() if matches(pattern, event.topic)
        ]
        if not triggers and not met:
            return _IGNORE
        for name in met:
            del current.expectations[name]
        return self._run(workflow, current, event, [t.handler for t in triggers])

    def _wake(self, workflow: Workflow, instance: Instance | None, event: Envelope) -> Decision:
        if instance is None or not instance.running:
            return _IGNORE
        due = rfc3339_micros(event.time)
        current = instance.copy()
        if event.topic.startswith(TIMER_PREFIX):
            name = event.topic[len(TIMER_PREFIX) :]
            entry = current.timers.get(name)
            if entry is None or int(entry[0]) != due:
                return _IGNORE
            del current.timers[name]
            handler = workflow.timer_handlers.get(name)
            if handler is None:
                raise WorkflowError(f"workflow {workflow.name!r} has no on_timer({name!r}) handler")
            return self._run(workflow, current, event, [handler])
        name = event.topic[len(EXPIRED_PREFIX) :]
        expectation = current.expectations.get(name)
        if expectation is None or int(expectation[1]) != due:
            return _IGNORE
        del current.expectations[name]
        handler = workflow.expiry_handlers.get(name, _default_expiry(name))
        return self._run(workflow, current, event, [handler])

    def _run(
        self, workflow: Workflow, instance: Instance, event: Envelope, handlers: list[Handler]
    ) -> Decision:
        now = rfc3339_micros(event.time)
        effects = _Effects(workflow, instance, event, now)
        state = instance.state
        for handler in handlers:
            if not instance.running:
                break
            new_state, intents = _result(handler(orjson.loads(state), event), workflow.name)
            try:
                state = canonical(new_state)
            except TypeError as exc:
                raise WorkflowError(f"workflow {workflow.name!r}: state {exc}") from None
            effects.apply(intents)
        instance.state = state
        instance.step += 1
        record = {
            "intents": effects.intents,
            "outgoing": [o.to_json() for o in effects.outgoing],
            "meta": orjson.loads(instance.meta()),
        }
        return Decision(
            APPLY,
            Transition(
                instance,
                tuple(effects.outgoing),
                canonical(event.to_dict()),
                canonical(record),
            ),
        )


def _default_expiry(name: str) -> Handler:
    def expired(state: JSON, event: Envelope) -> Step:
        return Step(state, [Fail(f"expectation {name!r} not met in time")])

    return expired


def _result(result: object, workflow: str) -> tuple[JSON, Sequence[Intent]]:
    if isinstance(result, Step):
        return result.state, tuple(result.intents)
    if isinstance(result, tuple) and len(result) == 2:
        return result[0], tuple(result[1])
    raise WorkflowError(
        f"workflow {workflow!r}: a handler must return (state, intents) or a Step,"
        f" not {type(result).__name__}"
    )


class _Effects:
    """Applies one transition's intents to the instance and collects its messages."""

    def __init__(self, workflow: Workflow, instance: Instance, event: Envelope, now: int) -> None:
        self.workflow = workflow
        self.instance = instance
        self.event = event
        self.now = now
        self.intents: list[JSON] = []
        self.outgoing: list[Outgoing] = []

    def apply(self, intents: Sequence[Intent]) -> None:
        for intent in intents:
            try:
                self.intents.append(intent_to_json(intent))
            except TypeError:
                raise WorkflowError(
                    f"workflow {self.workflow.name!r}: not an intent: {intent!r}"
                ) from None
            self._apply(intent)

    def _apply(self, intent: Intent) -> None:
        instance = self.instance
        if isinstance(intent, Publish | Command):
            self._send(intent, None)
            return
        if not instance.running:
            raise WorkflowError(
                f"workflow {self.workflow.name!r}: {intent_to_json(intent)['kind']} after the"
                f" instance {instance.key!r} ended"
            )
        match intent:
            case StartTimer(name, after, payload):
                if name not in self.workflow.timer_handlers:
                    raise WorkflowError(
                        f"workflow {self.workflow.name!r} has no on_timer({name!r}) handler"
                    )
                instance.timers[name] = [self.now + round(after * 1_000_000), payload]
            case CancelTimer(name):
                instance.timers.pop(name, None)
            case Expect(name, pattern, within):
                instance.expectations[name] = [pattern, self.now + round(within * 1_000_000)]
            case Compensate(name, actions):
                entry = [name, [intent_to_json(a) for a in actions]]
                for index, (existing, _) in enumerate(instance.compensations):
                    if existing == name:
                        instance.compensations[index] = entry
                        break
                else:
                    instance.compensations.append(entry)
            case Discard(name):
                instance.compensations = [c for c in instance.compensations if c[0] != name]
            case Fail(reason):
                stack = instance.compensations
                self._end(FAILED)
                instance.reason = reason
                for name, actions in reversed(stack):
                    for action in actions:
                        self._send(action_from_json(action), name)
            case Complete():
                self._end(COMPLETED)

    def _end(self, status: str) -> None:
        instance = self.instance
        instance.status = status
        instance.timers = {}
        instance.expectations = {}
        instance.compensations = []

    def _send(self, intent: Publish | Command, compensation: str | None) -> None:
        instance = self.instance
        number = len(self.outgoing)
        name = f"{instance.workflow}\x1f{instance.key}\x1f{self.event.id}\x1f{number}"
        intent_id = str(uuid.uuid5(_NAMESPACE, name))
        headers = {"workflow": instance.workflow, "instance": instance.key, "intent": intent_id}
        if isinstance(intent, Publish):
            headers = {**intent.headers, **headers}
            topic, payload = intent.topic, intent.payload
        else:
            headers["command"] = intent.name
            reply_to = intent.reply_to or self.workflow.reply_topic
            if reply_to is not None:
                headers["reply_to"] = reply_to
            topic, payload = intent.topic, intent.args
        if compensation is not None:
            headers["compensation"] = compensation
        self.outgoing.append(
            Outgoing(topic, payload, headers, instance.key, instance.key, self.event.id)
        )


__all__ = [
    "APPLY",
    "IGNORE",
    "PARK",
    "Decision",
    "Engine",
    "Outgoing",
    "Transition",
    "WorkflowError",
    "format_micros",
    "wakeup_event",
]
