"""`agentcast chaos`: listing, verdict lines and exit status (with stand-in scenarios, so
the exit status is shown to follow the verdicts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentcast.chaos.command import NAMES
from agentcast.chaos.invariants import Verdict
from agentcast.chaos.scenarios import SCENARIOS
from agentcast.chaos.scenarios.common import ScenarioResult, Settings
from agentcast.cli import main


def test_the_command_knows_every_scenario() -> None:
    assert set(NAMES) == set(SCENARIOS)


def test_list_names_every_scenario() -> None:
    result = CliRunner().invoke(main, ["chaos", "list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == list(SCENARIOS)


@pytest.mark.parametrize(("ok", "status"), [(True, 0), (False, 1)])
def test_exit_status_and_output_follow_the_verdicts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ok: bool, status: int
) -> None:
    async def stand_in(settings: Settings) -> ScenarioResult:
        assert settings.short and settings.seconds == 2.0
        return ScenarioResult(
            [Verdict("no_acked_loss", True, "fine"), Verdict("order", ok, "checked")],
            {"acked": 3},
        )

    monkeypatch.setitem(SCENARIOS, "kill_node", (stand_in, "stand-in"))
    output = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        main,
        ["chaos", "kill_node", "--short", "--seconds", "2", "--json", "--output", str(output)],
    )
    assert result.exit_code == status
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert parsed["ok"] is ok and parsed["stats"] == {"acked": 3}
    assert json.loads(output.read_text()) == parsed
    assert f"{'PASS' if ok else 'FAIL'} kill_node order: checked" in result.stderr
    assert "PASS kill_node no_acked_loss: fine" in result.stderr


def test_a_scenario_that_cannot_run_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(settings: Settings) -> ScenarioResult:
        raise RuntimeError("the node did not start")

    monkeypatch.setitem(SCENARIOS, "reconnect_loop", (broken, "broken"))
    result = CliRunner().invoke(main, ["chaos", "reconnect_loop", "--json"])
    assert result.exit_code == 1
    assert "FAIL reconnect_loop scenario_ran: RuntimeError: the node did not start" in (
        result.stderr
    )
