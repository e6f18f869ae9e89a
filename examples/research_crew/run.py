"""A simulated research crew coordinated by a workflow, end to end in one process.

Starts a node (durable ``acme.>`` topics in a SQLite history), the research workflow
(state and outbox in SQLite), three simulated agents and an observer; submits two
research requests, the second with an injected writer failure; prints the timeline of
events; exits 0 when the first request produced a report and the second was compensated
(notes discarded after the draft was deleted), 1 otherwise.

    python examples/research_crew/run.py
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agents import crew
from workflow import REPORTS, REQUESTS, WORKFLOWS

from agentcast.client import Client
from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from agentcast.orchestration.orchestrator import Orchestrator

REQUESTS_TO_SEND = {
    "req-1": "How do agents share memory?",
    "req-2": "Why do retries need idempotency? [fail]",
}


def line(started: float, event: object) -> str:
    topic = getattr(event, "topic", "")
    headers = getattr(event, "headers", {})
    what = headers.get("command") or headers.get("compensation") or ""
    status = headers.get("status", "")
    note = " (compensation)" if "compensation" in headers else ""
    run = getattr(event, "correlation_id", "")
    return f"{time.monotonic() - started:6.3f}s {run:6} {topic:28} {what:14} {status:6}{note}"


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="agentcast-research-") as directory:
        config = ServerConfig(
            port=0,
            http_port=0,
            history=f"sqlite:///{directory}/history.db",
            durable=(DurableRule("acme.>"),),
        )
        async with Node(config) as node, Client(node.ws_url) as client:
            started = time.monotonic()
            observer = await client.subscribe("acme.>")
            reports = await client.subscribe(REPORTS)
            orchestrator = Orchestrator(
                WORKFLOWS, dsn=f"sqlite:///{directory}/workflows.db", url=node.ws_url
            )
            stop = asyncio.Event()
            running = asyncio.create_task(orchestrator.run(stop))
            await orchestrator.ready.wait()

            async def watch() -> None:
                async for event in observer:
                    print(line(started, event))

            watcher = asyncio.create_task(watch())
            async with contextlib.AsyncExitStack() as agents:
                for agent in crew(client):
                    await agents.enter_async_context(agent)
                for request_id, question in REQUESTS_TO_SEND.items():
                    await client.publish(
                        REQUESTS, {"question": question}, correlation_id=request_id
                    )
                report = await asyncio.wait_for(reports.get(), 30)
                outcome = await wait_for_end(orchestrator, "req-2")
                log = await orchestrator.store.log("research", "req-2")
            stop.set()
            await running
            watcher.cancel()
            print()
            print(f"req-1: report {report.payload['report']!r} ({report.payload['verdict']})")
            print(f"req-2: {outcome.status}: {outcome.reason}")
            undone = [e for e in log if b'"compensation"' in e.effects]
            print(f"req-2: compensations ran in one transition: {len(undone) == 1}")
            ok = report.correlation_id == "req-1" and outcome.status == "failed"
            return 0 if ok and len(undone) == 1 else 1


async def wait_for_end(orchestrator: Orchestrator, key: str) -> object:
    """The instance once it has ended (polled: the store is the source of truth)."""
    async with asyncio.timeout(30):
        while True:
            instance = await orchestrator.store.instance("research", key)
            if instance is not None and not instance.running:
                return instance
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
