"""What every scenario shares: its settings, its result, node configs, and samplers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentcast.chaos.invariants import Sample, Verdict
from agentcast.chaos.processes import NodeProcess
from agentcast.chaos.recorder import SDK_OPTIONS, Phase
from agentcast.client import Client

SAMPLE_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class Settings:
    """How long to run: ``short`` is the CI version; ``seconds`` overrides the length of the
    scenario's main phase; ``directory`` holds every file and log of the run."""

    directory: Path
    short: bool = False
    seconds: float | None = None

    def length(self, full: float, short: float) -> float:
        """The main phase's length in seconds."""
        if self.seconds is not None:
            return self.seconds
        return short if self.short else full


@dataclass(slots=True)
class ScenarioResult:
    """What a scenario hands back: one verdict per invariant plus figures worth reporting."""

    verdicts: list[Verdict] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.verdicts) and all(v.ok for v in self.verdicts)


def node_config(
    history: Path, *, broker: str = "", extra: str = "", durable: str = "chaos.>"
) -> str:
    """TOML for a durable SQLite node (optionally in a cluster through ``broker``)."""
    lines = [
        f'history = "sqlite:///{history}"',
        f'durable = ["{durable}"]',
        'log_level = "warning"',
        "retention_interval = 3600",
    ]
    if broker:
        lines += [f'broker = "{broker}"', "cluster_heartbeat = 0.2", "member_timeout = 2.0"]
    return "\n".join(lines) + "\n" + extra


def client(url: str, name: str, **options: Any) -> Client:
    """An SDK client with the scenarios' reconnect settings."""
    return Client(url, name=name, **{**SDK_OPTIONS, **options})


async def sample_memory(
    node: NodeProcess, samples: list[Sample], phase: Phase, stop: asyncio.Event
) -> None:
    """Append the node's RSS/fds every :data:`SAMPLE_INTERVAL` until ``stop`` is set."""
    while not stop.is_set():
        with contextlib.suppress(Exception):  # the node may be between restarts
            samples.append(node.sample(phase.name))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_INTERVAL)


@contextlib.asynccontextmanager
async def background(*coros: Any) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run ``coros`` as tasks for the block; cancel and await those still running after."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def expect(name: str, ok: bool, detail: str) -> Verdict:
    """A scenario-specific verdict (a property of the fault itself, not of the history)."""
    return Verdict(name, ok, detail)
