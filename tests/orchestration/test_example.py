"""The research-crew example runs end to end: one report, one compensated failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "research_crew" / "run.py"


@pytest.mark.timeout(90)
def test_research_crew_example() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=80, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "req-2: failed: draft: the writer crashed while drafting" in lines
    undo = [line for line in lines if "(compensation)" in line]
    assert [line.split()[3] for line in undo] == ["delete_draft", "discard_notes"]
