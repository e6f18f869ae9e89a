"""A workflow for crash tests: per-run tallies, one output per input, and a crash hook.

An ``add`` event whose payload has ``"crash": true`` kills the process (SIGKILL, inside the
handler, so before its transaction commits) when the file named by ``TALLY_CRASH_MARKER``
exists; the file is removed first, so the crash happens once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from agentcast.orchestration import Publish, StartTimer, Step, Workflow
from agentcast.protocol.envelope import Envelope

IN = "t.tally.in"
OUT = "t.tally.out"

tally = Workflow("tally", topics=[IN])


@tally.on(IN, start=True, when=lambda e: e.headers.get("type") == "start")
def start(state: Any, event: Envelope) -> Step:
    return Step({"count": 0, "sum": 0})


@tally.on(IN, when=lambda e: e.headers.get("type") == "add")
def add(state: Any, event: Envelope) -> Step:
    if event.payload.get("crash"):
        marker = Path(os.environ.get("TALLY_CRASH_MARKER", "/nonexistent"))
        if marker.exists():
            marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
    state["count"] += 1
    state["sum"] += int(event.payload["v"])
    output = {"run": event.correlation_id, "count": state["count"], "v": event.payload["v"]}
    return Step(state, [Publish(OUT, output)])


@tally.on(IN, when=lambda e: e.headers.get("type") == "remind")
def remind(state: Any, event: Envelope) -> Step:
    return Step(state, [StartTimer("remind", float(event.payload["after"]), event.payload)])


@tally.on_timer("remind")
def reminded(state: Any, event: Envelope) -> Step:
    state["reminded"] = state.get("reminded", 0) + 1
    output = {"run": event.correlation_id, "reminder": event.payload["note"]}
    return Step(state, [Publish(OUT, output)])


ALL = [tally]
