"""Workflows inside ``agentcast serve``: an orchestrator supervised by the node.

The node starts it once its listeners are ready, connected to the node's own WebSocket
URL like any other client (so groups, acks and the cluster's ring owner work exactly as for
``agentcast orchestrate``), restarts it after a failure (database or connection) with a
capped exponential backoff, and stops it first when the node stops, so its unacked
deliveries go back to the group before the listeners close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentcast.orchestration.orchestrator import Orchestrator
from agentcast.orchestration.workflow import Workflow

log = logging.getLogger("agentcast.orchestration")

RESTART_INITIAL = 0.5
RESTART_MAX = 30.0


class EmbeddedOrchestrator:
    """Runs ``workflows`` with state in ``dsn`` against the node at ``url`` until stopped."""

    def __init__(self, workflows: list[Workflow], *, dsn: str, url: str, token: str | None) -> None:
        self.workflows = workflows
        self.dsn = dsn
        self.url = url
        self.token = token
        self.current: Orchestrator | None = None
        self.restarts = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the supervised orchestrator in the background."""
        self._task = asyncio.create_task(self._supervise(), name="agentcast-orchestrator")

    async def stop(self) -> None:
        """Stop the orchestrator and wait for it (idempotent)."""
        self._stop.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _supervise(self) -> None:
        delay = RESTART_INITIAL
        while not self._stop.is_set():
            self.current = Orchestrator(
                self.workflows, dsn=self.dsn, url=self.url, token=self.token
            )
            try:
                await self.current.run(self._stop)
                return
            except Exception:
                log.exception("orchestrator failed; restarting in %.1f s", delay)
            self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, RESTART_MAX)
