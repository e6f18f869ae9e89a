"""Workflows end to end: a real node, an orchestrator, agents answering commands."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import generate_latest

from agentcast.client import Client
from agentcast.client.subscription import Subscription
from agentcast.node import Node
from agentcast.orchestration.agent import AgentWorker, CommandFailed
from agentcast.orchestration.instance import COMPLETED, FAILED
from agentcast.orchestration.orchestrator import Orchestrator
from agentcast.protocol.envelope import Envelope
from tests.orchestration.flows import AGENTS, IN, OUT, RESULTS, UNDO, counter


@contextlib.asynccontextmanager
async def orchestrating(node: Node, dsn: str, **options: Any) -> AsyncIterator[Orchestrator]:
    orchestrator = Orchestrator([counter], dsn=dsn, url=node.ws_url, **options)
    stop = asyncio.Event()
    task = asyncio.create_task(orchestrator.run(stop))
    ready = asyncio.create_task(orchestrator.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        await task
    try:
        yield orchestrator
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def prepare(args: Any, command: Envelope) -> Any:
    if str(command.correlation_id).startswith("bad"):
        raise CommandFailed("no capacity")
    return {"prepared": args["run"]}


async def release(args: Any, command: Envelope) -> Any:
    return {"released": args["name"]}


async def take(sub: Subscription, count: int) -> list[Envelope]:
    return [await asyncio.wait_for(sub.get(), 20) for _ in range(count)]


@pytest.mark.timeout(90)
async def test_commands_results_timers_and_completion(dnode: Node, wf_dsn: str) -> None:
    async with (
        Client(dnode.ws_url) as client,
        orchestrating(dnode, wf_dsn, wake_interval=0.2) as orchestrator,
        AgentWorker(client, AGENTS, {"prepare": prepare, "release": release}) as agent,
    ):
        out = await client.subscribe(OUT)
        results = await client.subscribe(RESULTS)
        run = {"correlation_id": "run-1"}
        await client.publish(IN, {"tick": 0.05}, headers={"type": "start"}, **run)
        for v in (1, 2):
            await client.publish(IN, {"v": v}, headers={"type": "add"}, **run)
        reply = (await take(results, 1))[0]
        assert reply.headers["status"] == "ok" and reply.payload == {"prepared": "run-1"}
        assert reply.correlation_id == "run-1"
        outputs = [e.payload for e in await take(out, 5)]
        assert [p["n"] for p in outputs if "n" in p] == [1, 3]
        assert [p["tick"] for p in outputs if "tick" in p] == [1, 2, 3]
        await client.publish(RESULTS, None, headers={"status": "done"}, **run)
        (done,) = await take(out, 1)
        assert done.payload == {"done": 3} and done.causation_id is not None
        instance = await orchestrator.store.instance("counter", "run-1")
        assert instance is not None and instance.status == COMPLETED
        assert agent.ok == 1 and orchestrator.stats.failures == 0
        exposition = generate_latest(orchestrator.metrics.registry).decode()
        transitions = f"agentcast_workflow_transitions_total {orchestrator.stats.applied:.1f}"
        assert transitions in exposition and orchestrator.stats.applied >= 8
        assert "agentcast_workflow_batch_seconds_count" in exposition
        assert "agentcast_outbox_published_total" in exposition


@pytest.mark.timeout(90)
async def test_agent_failure_runs_compensations_in_reverse(dnode: Node, wf_dsn: str) -> None:
    async with (
        Client(dnode.ws_url) as client,
        orchestrating(dnode, wf_dsn) as orchestrator,
    ):
        undo = await client.subscribe(UNDO)
        commands = await client.subscribe(AGENTS)
        run = {"correlation_id": "bad-1"}
        await client.publish(IN, None, headers={"type": "start"}, **run)
        for name in ("gpu", "budget"):
            await client.publish(IN, {"name": name}, headers={"type": "reserve"}, **run)
        (command,) = await take(commands, 1)
        async with AgentWorker(client, AGENTS, {"prepare": prepare, "release": release}):
            released = await take(commands, 2)
            (undone,) = await take(undo, 1)
        assert command.headers["command"] == "prepare"
        assert [e.payload for e in released] == [{"name": "budget"}, {"name": "gpu"}]
        assert [e.headers["compensation"] for e in released] == ["budget", "gpu"]
        assert undone.payload == {"undo": "prepare"}
        instance = await orchestrator.store.instance("counter", "bad-1")
        assert instance is not None and instance.status == FAILED
        assert instance.reason == "{'error': 'no capacity'}"
