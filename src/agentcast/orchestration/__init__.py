"""Workflows over agentcast events: correlation, durable state, deterministic handlers,
timers and expectations, compensation. See docs/orchestration.md."""

from agentcast.orchestration.correlation import (
    by_correlation_id,
    by_header,
    by_payload,
    by_topic_segment,
)
from agentcast.orchestration.engine import Engine, Outgoing, WorkflowError
from agentcast.orchestration.instance import Instance
from agentcast.orchestration.intents import (
    CancelTimer,
    Command,
    Compensate,
    Complete,
    Discard,
    Expect,
    Fail,
    Publish,
    StartTimer,
)
from agentcast.orchestration.workflow import Step, Workflow

__all__ = [
    "CancelTimer",
    "Command",
    "Compensate",
    "Complete",
    "Discard",
    "Engine",
    "Expect",
    "Fail",
    "Instance",
    "Outgoing",
    "Publish",
    "StartTimer",
    "Step",
    "Workflow",
    "WorkflowError",
    "by_correlation_id",
    "by_header",
    "by_payload",
    "by_topic_segment",
]
