"""The short version of every chaos scenario, run as CI runs it: real node processes, and
private Redis/NATS servers on free ports (the machine's shared services are never touched).
Each must pass every verdict; the figures show the fault really happened."""

from __future__ import annotations

from typing import Any

import pytest

from agentcast.chaos.runner import run_scenario


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    return {v["name"]: v["ok"] for v in result["verdicts"]}


def assert_passed(result: dict[str, Any]) -> None:
    failed = [v for v in result["verdicts"] if not v["ok"]]
    assert result["ok"] and not failed, failed


@pytest.mark.timeout(120)
async def test_kill_node_short() -> None:
    result = await run_scenario("kill_node", short=True)
    assert_passed(result)
    assert result["stats"]["kills"] == 2
    assert result["stats"]["acked"] == result["stats"]["events"]


@pytest.mark.timeout(120)
async def test_stuck_consumer_short() -> None:
    result = await run_scenario("stuck_consumer", short=True)
    assert_passed(result)
    assert {"memory_bounded", "latency", "slow_consumer_policy"} <= verdicts(result).keys()


@pytest.mark.timeout(120)
async def test_reconnect_loop_short() -> None:
    result = await run_scenario("reconnect_loop", short=True)
    assert_passed(result)
    assert result["stats"]["rounds"] >= 2 and result["stats"]["aborted"] >= 1


@pytest.mark.timeout(150)
async def test_broker_restart_short() -> None:
    result = await run_scenario("broker_restart", short=True)
    assert_passed(result)
    assert set(result["stats"]["outage_seconds"]) == {"redis", "nats"}


@pytest.mark.timeout(150)
async def test_broker_faults_short() -> None:
    result = await run_scenario("broker_faults", short=True)
    assert_passed(result)
    for link in result["stats"]["links"].values():
        assert link["reset"] >= 1 and link["reconnected"] >= 1
