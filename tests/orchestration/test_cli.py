"""``agentcast workflow list|show|replay`` and workflows inside a node (``serve``)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from agentcast.cli import main
from agentcast.client import Client
from agentcast.config import ServerConfig
from agentcast.node import Node
from agentcast.orchestration.db import open_db
from agentcast.orchestration.engine import Engine, format_micros
from agentcast.orchestration.store import WorkflowStore
from agentcast.protocol.envelope import Envelope
from tests.orchestration.conftest import durable_config
from tests.orchestration.flows import AGENTS, IN, RESULTS, counter

SPEC = "tests.orchestration.flows:ALL"


def event(n: int, kind: str | None, payload: object = None, topic: str = IN) -> Envelope:
    return Envelope(
        id=f"c{n}", topic=topic, seq=n, epoch="x", time=format_micros(1_790_000_000_000_000 + n),
        source="s", payload=payload, headers={"type": kind} if kind else {}, correlation_id="k1",
    )  # fmt: skip


def record(dsn: str, *, tamper: bool = False) -> None:
    """Four transitions of instance ``k1``; ``tamper`` rewrites step 2's logged state."""

    async def run() -> None:
        store = WorkflowStore(open_db(dsn), Engine([counter]))
        await store.open()
        try:
            await store.process([event(1, "start", {"tick": 5}), event(2, "add", {"v": 3})])
            await store.process([event(3, "reserve", {"name": "gpu"})])
            await store.process([event(4, None, "boom", topic=RESULTS)])
            if tamper:
                await store.execute(
                    "UPDATE agentcast_wf_log SET state = ? WHERE step = 2", '{"n":4,"seen":[4]}'
                )
        finally:
            await store.close()

    asyncio.run(run())


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_replay_list_and_show(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path}/wf.db"
    record(dsn)
    code, out = invoke("workflow", "replay", SPEC, "counter", "k1", "--db", dsn)
    assert code == 0, out
    assert out.strip() == "counter/k1: 4 step(s) replayed, identical"
    code, out = invoke("workflow", "replay", SPEC, "counter", "k1", "--db", dsn, "--json")
    assert code == 0 and orjson.loads(out)["identical"] is True
    code, out = invoke("workflow", "list", "--db", dsn)
    assert code == 0 and out.split("\t")[:3] == ["counter", "k1", "running"]
    code, out = invoke("workflow", "show", "counter", "k1", "--db", dsn)
    steps = [orjson.loads(line) for line in out.splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert steps[1]["state"] == {"n": 3, "seen": [3]}


def test_replay_reports_a_changed_step_and_exits_1(tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path}/wf.db"
    record(dsn, tamper=True)
    code, out = invoke("workflow", "replay", SPEC, "counter", "k1", "--db", dsn)
    assert code == 1
    assert "1 difference(s)" in out and "step 2 state" in out


def test_clear_errors_for_bad_input(tmp_path: Path) -> None:
    code, out = invoke("workflow", "replay", "no_such_module:x", "counter", "k1")
    assert code == 2 and "cannot import 'no_such_module'" in out
    code, out = invoke("workflow", "replay", SPEC, "nope", "k1")
    assert code == 2 and "no workflow 'nope'" in out
    code, out = invoke("workflow", "list", "--db", f"sqlite:///{tmp_path}/missing.db")
    assert code == 1 and "no workflow database" in out
    code, out = invoke("workflow", "list", "--db", "mysql://x")
    assert code == 2 and "unsupported" in out
    code, out = invoke("orchestrate", "tests.orchestration.flows:counter_missing")
    assert code == 2 and "has no attribute" in out


@pytest.mark.timeout(60)
async def test_workflows_inside_a_node(tmp_path: Path) -> None:
    config = replace(
        durable_config(tmp_path), workflows=SPEC, workflows_db=f"sqlite:///{tmp_path}/wf.db"
    )
    async with Node(config) as node, Client(node.ws_url) as client:
        commands = await client.subscribe(AGENTS)
        await client.publish(IN, None, headers={"type": "start"}, correlation_id="inside")
        command = await asyncio.wait_for(commands.get(), 30)
        assert command.headers["command"] == "prepare" and command.correlation_id == "inside"
        assert node.orchestrator is not None and node.orchestrator.restarts == 0


async def test_a_bad_workflows_key_stops_the_node(tmp_path: Path) -> None:
    from agentcast.config import ConfigError

    config = ServerConfig(port=0, http_port=0, workflows="tests.orchestration.flows:nothing")
    with pytest.raises(ConfigError, match="has no attribute 'nothing'"):
        async with Node(config):
            pass
