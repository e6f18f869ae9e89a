"""CrewAI events as agentcast publishes: a sans-I/O mapping.

Nothing here imports CrewAI or does I/O. An event is read by duck typing (the attributes
CrewAI's ``BaseEvent`` and its subclasses carry), so the mapping is testable with real CrewAI
event objects and without a node.

Mapping of one event (see ``docs/integrations.md`` for the table):

* **Topic.** ``<tenant>.<session>.<prefix>.<kind>``; the kind comes from the event's ``type``
  (``crew_*`` -> ``crew``, ``agent_*``/``lite_agent_*`` -> ``agent``, ``task_*`` -> ``task``,
  ``tool_*`` -> ``tool``, ``llm_*`` -> ``llm``, ``flow_*``/``method_execution_*`` -> ``flow``).
  An event of any other type is not mapped (:func:`map_event` returns ``None``).
* **Identity.** The node assigns the envelope ``id``, so CrewAI's ``event_id`` travels in the
  ``crewai_event_id`` header and makes the idempotency key ``crewai/<session>/<event_id>``:
  the same CrewAI event published twice is sequenced once within the node's dedupe window.
* **Causation.** ``causation_id`` is the CrewAI id of the event's cause: the event that
  triggered it, else its enclosing (parent) scope, else the started event a completion
  closes. Each of those ids also travels in its own header, so a consumer links an envelope
  to its cause through the cause's ``crewai_event_id`` header.
* **Ordering.** CrewAI's ``emission_sequence`` travels in ``crewai_emission_sequence``; the
  publisher keeps emission order itself (one queue, one publishing task).
* **Correlation.** :class:`CorrelationTracker` gives every event the root of its scope chain
  (for a crew run, the ``crew_kickoff_started`` event), which becomes ``correlation_id``.
* **Payload.** A bounded, JSON-safe summary (:mod:`agentcast.integrations.summary`): type,
  kind, ids, timestamp, task and agent names and ids, and the event's plain fields (inputs,
  outputs, errors, tool name and arguments, model, stream chunk, usage...). Live objects
  (agents, crews, LLM clients) and prompt message lists are never copied.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from agentcast.integrations.summary import SummaryLimits, summarize, truncate
from agentcast.protocol.commands import MAX_HEADER_VALUE, MAX_NAME_LENGTH
from agentcast.protocol.topics import validate_topic

KINDS: tuple[str, ...] = ("crew", "agent", "task", "tool", "llm", "flow")

# Event ``type`` prefixes and the kind they map to; the first match wins.
_KIND_PREFIXES: tuple[tuple[str, str], ...] = (
    ("crew_", "crew"),
    ("lite_agent_", "agent"),
    ("agent_execution_", "agent"),
    ("task_", "task"),
    ("tool_", "tool"),
    ("llm_", "llm"),
    ("flow_", "flow"),
    ("method_execution_", "flow"),
)

# The CrewAI event classes a listener subscribes to, by kind: names exported by
# ``crewai.events`` (a name missing from the installed version is skipped).
EVENT_CLASSES: dict[str, tuple[str, ...]] = {
    "crew": (
        "CrewKickoffStartedEvent",
        "CrewKickoffCompletedEvent",
        "CrewKickoffFailedEvent",
        "CrewTrainStartedEvent",
        "CrewTrainCompletedEvent",
        "CrewTrainFailedEvent",
        "CrewTestStartedEvent",
        "CrewTestCompletedEvent",
        "CrewTestFailedEvent",
        "CrewTestResultEvent",
    ),
    "agent": (
        "AgentExecutionStartedEvent",
        "AgentExecutionCompletedEvent",
        "AgentExecutionErrorEvent",
        "LiteAgentExecutionStartedEvent",
        "LiteAgentExecutionCompletedEvent",
        "LiteAgentExecutionErrorEvent",
    ),
    "task": ("TaskStartedEvent", "TaskCompletedEvent", "TaskFailedEvent", "TaskEvaluationEvent"),
    "tool": (
        "ToolUsageStartedEvent",
        "ToolUsageFinishedEvent",
        "ToolUsageErrorEvent",
        "ToolValidateInputErrorEvent",
        "ToolSelectionErrorEvent",
        "ToolExecutionErrorEvent",
        "ToolFailureDetectedEvent",
    ),
    "llm": (
        "LLMCallStartedEvent",
        "LLMCallCompletedEvent",
        "LLMCallFailedEvent",
        "LLMStreamChunkEvent",
    ),
    "flow": (
        "FlowStartedEvent",
        "FlowFinishedEvent",
        "FlowFailedEvent",
        "MethodExecutionStartedEvent",
        "MethodExecutionFinishedEvent",
        "MethodExecutionFailedEvent",
    ),
}

HEADER_EVENT_ID = "crewai_event_id"
HEADER_EVENT_TYPE = "crewai_event_type"
HEADER_EMISSION_SEQUENCE = "crewai_emission_sequence"
HEADER_PARENT = "crewai_parent_event_id"
HEADER_STARTED = "crewai_started_event_id"
HEADER_TRIGGERED_BY = "crewai_triggered_by_event_id"
HEADER_PREVIOUS = "crewai_previous_event_id"

# Plain event fields copied (summarized) into the payload when present and not None.
DETAIL_FIELDS: tuple[str, ...] = (
    "crew_name",
    "inputs",
    "output",
    "total_tokens",
    "error",
    "context",
    "task_prompt",
    "evaluation_type",
    "agent_info",
    "tool_name",
    "tool_args",
    "tool_class",
    "run_attempts",
    "delegations",
    "from_cache",
    "started_at",
    "finished_at",
    "model",
    "call_id",
    "call_type",
    "chunk",
    "response_id",
    "response",
    "usage",
    "finish_reason",
    "flow_name",
    "method_name",
    "result",
    "n_iterations",
    "quality",
    "execution_duration",
)


def kind_of(event_type: str) -> str | None:
    """The agentcast kind of a CrewAI event ``type``, or ``None`` if it is not bridged."""
    for prefix, kind in _KIND_PREFIXES:
        if event_type.startswith(prefix):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """Where a session's CrewAI events go: ``<tenant>.<session>.<prefix>.<kind>``.

    ``prefix`` may hold dots (``"fw.crewai"``). Raises
    :class:`~agentcast.errors.InvalidTopic` at construction if any kind's topic is invalid.
    """

    tenant: str
    session: str
    prefix: str = "crewai"

    def __post_init__(self) -> None:
        for kind in KINDS:
            validate_topic(self.topic(kind))

    def topic(self, kind: str) -> str:
        """The topic of ``kind``'s events."""
        return f"{self.tenant}.{self.session}.{self.prefix}.{kind}"

    @property
    def pattern(self) -> str:
        """The wildcard pattern that matches every kind's topic of this session."""
        return f"{self.tenant}.{self.session}.{self.prefix}.*"


@dataclass(frozen=True, slots=True)
class CrewEventRecord:
    """One CrewAI event, ready to publish (everything but the correlation id)."""

    kind: str
    topic: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    headers: dict[str, str]
    idempotency_key: str
    causation_id: str | None
    parent_event_id: str | None = None
    started_event_id: str | None = None
    triggered_by_event_id: str | None = None
    emission_sequence: int | None = None


def _opt_id(event: object, name: str) -> str | None:
    value = getattr(event, name, None)
    return None if value is None else str(value)


def idempotency_key(session: str, event_id: str) -> str:
    """``crewai/<session>/<event_id>``, hashed when longer than the protocol allows."""
    key = f"crewai/{session}/{event_id}"
    if len(key) <= MAX_NAME_LENGTH:
        return key
    return "crewai/sha256/" + hashlib.sha256(key.encode()).hexdigest()


def _named(
    event: object, id_field: str, name_field: str, obj_field: str, obj_names: tuple[str, ...]
) -> dict[str, Any] | None:
    """``{"id", "name"}`` of the task or agent an event is about, from its flat fields or
    else from the object it carries."""
    ident = getattr(event, id_field, None)
    name = getattr(event, name_field, None)
    obj = getattr(event, obj_field, None)
    if obj is not None:
        if ident is None:
            ident = getattr(obj, "id", None)
        for attr in obj_names:
            if name is None:
                name = getattr(obj, attr, None)
    if ident is None and name is None:
        return None
    return {
        "id": None if ident is None else str(ident),
        "name": None if name is None else truncate(str(name), 512),
    }


def _tool_call(value: object, limits: SummaryLimits) -> dict[str, Any]:
    function = getattr(value, "function", None)
    return {
        "id": summarize(getattr(value, "id", None), limits),
        "name": summarize(getattr(function, "name", None), limits),
        "arguments": summarize(getattr(function, "arguments", None), limits),
    }


def event_payload(event: object, kind: str, limits: SummaryLimits) -> dict[str, Any]:
    """The bounded, JSON-safe summary of ``event`` that becomes the envelope's payload."""
    timestamp = getattr(event, "timestamp", None)
    payload: dict[str, Any] = {
        "type": str(getattr(event, "type", "")),
        "kind": kind,
        "event_id": _opt_id(event, "event_id"),
        "timestamp": summarize(timestamp, limits),
        "emission_sequence": summarize(getattr(event, "emission_sequence", None), limits),
        "parent_event_id": _opt_id(event, "parent_event_id"),
        "started_event_id": _opt_id(event, "started_event_id"),
        "triggered_by_event_id": _opt_id(event, "triggered_by_event_id"),
        "previous_event_id": _opt_id(event, "previous_event_id"),
        "source_type": summarize(getattr(event, "source_type", None), limits),
        "source_fingerprint": _opt_id(event, "source_fingerprint"),
    }
    task = _named(event, "task_id", "task_name", "task", ("name", "description"))
    if task is not None:
        payload["task"] = task
    agent = _named(event, "agent_id", "agent_role", "agent", ("role",))
    if agent is not None:
        payload["agent"] = agent
    for name in DETAIL_FIELDS:
        value = getattr(event, name, None)
        if value is not None:
            payload[name] = summarize(value, limits)
    tool_call = getattr(event, "tool_call", None)
    if tool_call is not None:
        payload["tool_call"] = _tool_call(tool_call, limits)
    return payload


def event_headers(event: object) -> dict[str, str]:
    """The ``crewai_*`` headers of ``event`` (ids, type, emission sequence)."""
    headers: dict[str, str] = {}
    for header, attr in (
        (HEADER_EVENT_ID, "event_id"),
        (HEADER_EVENT_TYPE, "type"),
        (HEADER_EMISSION_SEQUENCE, "emission_sequence"),
        (HEADER_PARENT, "parent_event_id"),
        (HEADER_STARTED, "started_event_id"),
        (HEADER_TRIGGERED_BY, "triggered_by_event_id"),
        (HEADER_PREVIOUS, "previous_event_id"),
    ):
        value = getattr(event, attr, None)
        if value is not None:
            headers[header] = truncate(str(value), MAX_HEADER_VALUE)
    return headers


def map_event(event: object, layout: TopicLayout, limits: SummaryLimits) -> CrewEventRecord | None:
    """The publish of one CrewAI event, or ``None`` if its type is not bridged or it has no
    ``event_id``. Reads the event's current fields: call it when the event is emitted (the
    bus fills in the ids and sequence at emission)."""
    event_type = getattr(event, "type", None)
    event_id = getattr(event, "event_id", None)
    if not isinstance(event_type, str) or event_id is None:
        return None
    kind = kind_of(event_type)
    if kind is None:
        return None
    event_id = str(event_id)
    parent = _opt_id(event, "parent_event_id")
    started = _opt_id(event, "started_event_id")
    triggered = _opt_id(event, "triggered_by_event_id")
    sequence = getattr(event, "emission_sequence", None)
    return CrewEventRecord(
        kind=kind,
        topic=layout.topic(kind),
        event_id=event_id,
        event_type=event_type,
        payload=event_payload(event, kind, limits),
        headers=event_headers(event),
        idempotency_key=idempotency_key(layout.session, event_id),
        causation_id=triggered or parent or started,
        parent_event_id=parent,
        started_event_id=started,
        triggered_by_event_id=triggered,
        emission_sequence=sequence if isinstance(sequence, int) else None,
    )


class CorrelationTracker:
    """The root of each event's scope chain, fed with events in emission order.

    An event's root is the root of the first of its parent, started and triggering events
    that the tracker has seen; if it has seen none of them, the first of those ids that is
    set (a scope outside the bridged kinds); if none is set, the event itself. A crew run's
    events thus share the id of its ``crew_kickoff_started`` event, and so does the
    ``crew_kickoff_completed`` event that closes it. At most ``max_events`` ids are
    remembered (oldest forgotten first), which bounds memory on long-running processes.
    Not thread-safe: one publishing task owns it.
    """

    def __init__(self, max_events: int = 10_000) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.max_events = max_events
        self._roots: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._roots)

    def root_of(self, record: CrewEventRecord) -> str:
        """Record ``record`` and return its root id."""
        refs = [
            ref
            for ref in (
                record.parent_event_id,
                record.started_event_id,
                record.triggered_by_event_id,
            )
            if ref
        ]
        root = next((self._roots[ref] for ref in refs if ref in self._roots), None)
        if root is None:
            root = refs[0] if refs else record.event_id
        self._roots[record.event_id] = root
        self._roots.move_to_end(record.event_id)
        while len(self._roots) > self.max_events:
            self._roots.popitem(last=False)
        return root
