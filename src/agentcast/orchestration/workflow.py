"""Declaring a workflow: its input topics, correlation, initial state and handlers.

::

    research = Workflow(
        "research",
        topics=["acme.research.requests", "acme.research.results"],
        reply_topic="acme.research.results",
    )

    @research.on("acme.research.requests", start=True)
    def requested(state, event):
        return {"question": event.payload["question"]}, [
            Command("acme.agents.search", "search", {"q": event.payload["question"]}),
            Expect("search", "acme.research.results", within=30),
        ]

A handler is a pure function of ``(state, event)``: it returns ``(new_state, intents)`` (or a
:class:`Step`). It must not read clocks, random numbers, files or the network, and must not
keep anything between calls: the engine hands it a fresh copy of the state decoded from
JSON and relies on it returning the same result for the same input, which
``agentcast workflow replay`` checks. The event's ``time`` is the clock a handler may use.

Several triggers may match one event: their handlers run in declaration order, each given
the state the previous one returned.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentcast.orchestration.correlation import Correlator, by_correlation_id
from agentcast.orchestration.intents import Intent
from agentcast.protocol.envelope import Envelope
from agentcast.protocol.topics import matches, validate_pattern, validate_topic

JSON = Any

TIMER_PREFIX = "$timer."
EXPIRED_PREFIX = "$expired."


@dataclass(frozen=True, slots=True)
class Step:
    """What a handler returns: the new state and the intents to carry out."""

    state: JSON
    intents: Sequence[Intent] = ()


HandlerResult = Step | tuple[JSON, Sequence[Intent]]
Handler = Callable[[JSON, Envelope], HandlerResult]
Predicate = Callable[[Envelope], bool]


@dataclass(frozen=True, slots=True)
class Trigger:
    """A handler for events whose topic matches ``pattern`` and for which ``when`` is true;
    a ``start`` trigger creates the instance when it does not exist yet."""

    pattern: str
    handler: Handler
    start: bool = False
    when: Predicate | None = None

    def applies(self, event: Envelope) -> bool:
        return matches(self.pattern, event.topic) and (self.when is None or self.when(event))


@dataclass(slots=True)
class Workflow:
    """A named workflow.

    ``topics`` are the exact durable topics its orchestrator consumes (through a consumer
    group); trigger patterns select among their events. ``correlate`` picks the instance
    key of an event (default: its ``correlation_id``). ``initial`` is the state of a new
    instance (copied for each; or a callable returning it). ``reply_topic`` is where agents
    report the results of this workflow's commands unless a command names another.
    """

    name: str
    topics: Sequence[str]
    correlate: Correlator = field(default_factory=by_correlation_id)
    initial: JSON = field(default_factory=dict)
    reply_topic: str | None = None
    triggers: list[Trigger] = field(default_factory=list)
    timer_handlers: dict[str, Handler] = field(default_factory=dict)
    expiry_handlers: dict[str, Handler] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"workflow name must be letters, digits, - and _: {self.name!r}")
        self.topics = tuple(validate_topic(t) for t in self.topics)
        if not self.topics:
            raise ValueError(f"workflow {self.name!r} consumes no topics")
        if self.reply_topic is not None:
            validate_topic(self.reply_topic)

    # -- declaration ------------------------------------------------------------------

    def on(
        self, pattern: str, *, start: bool = False, when: Predicate | None = None
    ) -> Callable[[Handler], Handler]:
        """Decorator: run the handler for events matching ``pattern`` (and ``when``)."""
        validate_pattern(pattern)
        if not any(matches(pattern, topic) for topic in self.topics):
            raise ValueError(f"trigger {pattern!r} matches none of the workflow's topics")

        def register(handler: Handler) -> Handler:
            self.triggers.append(Trigger(pattern, handler, start, when))
            return handler

        return register

    def on_timer(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: run the handler when the timer ``name`` fires."""

        def register(handler: Handler) -> Handler:
            self.timer_handlers[name] = handler
            return handler

        return register

    def on_expired(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: run the handler when the expectation ``name`` expires (instead of
        failing the instance)."""

        def register(handler: Handler) -> Handler:
            self.expiry_handlers[name] = handler
            return handler

        return register

    # -- queries used by the engine -----------------------------------------------------

    def new_state(self) -> JSON:
        """A fresh initial state."""
        return self.initial() if callable(self.initial) else copy.deepcopy(self.initial)

    def accepts(self, topic: str) -> bool:
        """Whether events of ``topic`` are inputs of this workflow."""
        return topic in self.topics

    def triggers_for(self, event: Envelope) -> list[Trigger]:
        """The triggers that apply to ``event``, in declaration order."""
        return [t for t in self.triggers if t.applies(event)]


def collect_workflows(value: object) -> list[Workflow]:
    """Normalise what ``module:attr`` names: a workflow, or an iterable of workflows.

    Raises ``ValueError`` for anything else or for two workflows with the same name.
    """
    items: list[object] = [value] if isinstance(value, Workflow) else []
    if not items and isinstance(value, Iterable) and not isinstance(value, str | bytes):
        items = list(value)
    if not items or not all(isinstance(w, Workflow) for w in items):
        raise ValueError("expected a Workflow or a list of Workflows")
    workflows = [w for w in items if isinstance(w, Workflow)]
    names = [w.name for w in workflows]
    if len(set(names)) != len(names):
        raise ValueError(f"workflow names must be unique: {names}")
    return workflows


def import_workflows(spec: str) -> list[Workflow]:
    """Import ``module:attribute`` (the current directory is importable) and return the
    workflows it names; raise ``ValueError`` saying why not."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{module_name!r} has no attribute {attribute!r}") from None
    try:
        return collect_workflows(value)
    except ValueError as exc:
        raise ValueError(f"{spec}: {exc}") from None
