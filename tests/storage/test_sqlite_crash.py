"""``kill -9`` a process in the middle of SQLite appends: nothing it acknowledged is lost.

The child appends numbered events in batches of varying size and prints every returned
(acknowledged) ``seq`` the moment ``append`` returns. The parent kills it mid-stream, reopens
the file and checks the invariants: every acknowledged event is there exactly once, in order,
seqs are gapless from 1, and appending continues right after the last stored seq.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import orjson
import pytest

from agentcast.storage.base import EventDraft
from agentcast.storage.sqlite import SqliteHistoryStore

TOPIC = "crash.events"
ACKS_BEFORE_KILL = 300
LINE_TIMEOUT = 20.0

CHILD = """
import asyncio
import sys

import orjson

from agentcast.storage.base import EventDraft
from agentcast.storage.sqlite import SqliteHistoryStore


async def main(path: str, synchronous: str) -> None:
    store = SqliteHistoryStore(path, synchronous=synchronous)
    await store.open()
    sent = 0
    for batch in range(100_000):  # bounded; the parent kills us long before the end
        size = batch % 7 + 1
        drafts = [
            EventDraft(
                id=f"ev-{sent + i + 1}",
                topic=TOPIC,
                time="2025-01-01T00:00:00.000000Z",
                source="crash-child",
                payload=orjson.dumps({"n": sent + i + 1}),
            )
            for i in range(size)
        ]
        results = await store.append(drafts)
        sent += size
        sys.stdout.write("".join(f"{r.event.seq} {r.event.id}\\n" for r in results))
        sys.stdout.flush()


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def parse_acks(data: bytes) -> list[tuple[int, str]]:
    """Complete ``seq id`` lines; a torn last line is not an acknowledgement."""
    lines = data.split(b"\n")[:-1]
    return [(int(seq), id_.decode()) for seq, id_ in (line.split() for line in lines)]


@pytest.mark.slow
@pytest.mark.parametrize("synchronous", ["normal", "full"])
async def test_acknowledged_appends_survive_kill_9(tmp_path: Path, synchronous: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD.replace("TOPIC", repr(TOPIC)))
    path = tmp_path / "data" / "history.db"
    stderr_path = tmp_path / "child.err"
    with stderr_path.open("wb") as stderr:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            str(path),
            synchronous,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert child.stdout is not None
    received = b""
    try:
        while received.count(b"\n") < ACKS_BEFORE_KILL:
            line = await asyncio.wait_for(child.stdout.readline(), LINE_TIMEOUT)
            assert line, f"child exited early: {stderr_path.read_text()}"
            received += line
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.wait_for(child.wait(), LINE_TIMEOUT)
    received += await asyncio.wait_for(child.stdout.read(), LINE_TIMEOUT)
    assert child.returncode == -signal.SIGKILL
    acks = parse_acks(received)
    assert len(acks) >= ACKS_BEFORE_KILL
    assert [seq for seq, _ in acks] == list(range(1, len(acks) + 1))

    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()

    store = SqliteHistoryStore(path)
    await store.open()
    try:
        position = await store.position(TOPIC)
        assert position is not None
        assert position.first_seq == 1 and position.last_seq >= len(acks)
        stored = await store.read(TOPIC, 0, position.last_seq + 10)
        assert [e.seq for e in stored] == list(range(1, position.last_seq + 1))
        assert [e.id for e in stored] == [f"ev-{seq}" for seq in range(1, len(stored) + 1)]
        assert [orjson.loads(e.payload)["n"] for e in stored] == [e.seq for e in stored]
        assert {e.epoch for e in stored} == {position.epoch}
        by_seq = {e.seq: e.id for e in stored}
        assert all(by_seq[seq] == id_ for seq, id_ in acks), "an acknowledged event is missing"

        after = EventDraft("after", TOPIC, "2025-01-01T00:00:01Z", "parent", b"{}")
        (result,) = await store.append([after])
        assert (result.event.epoch, result.event.seq) == (position.epoch, position.last_seq + 1)
    finally:
        await store.close()
