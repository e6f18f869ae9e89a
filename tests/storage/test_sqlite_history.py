"""SQLite history specifics: the events table's single index, and reading event times."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from agentcast.storage.base import EventDraft
from agentcast.storage.memory import rfc3339_micros
from agentcast.storage.sqlite import SqliteHistoryStore, _EventTimes


def draft(n: int, time: str) -> EventDraft:
    return EventDraft(f"ev-{n}", "s.t", time, "ac://test", orjson.dumps({"n": n}))


def indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {name for (name,) in rows}


async def test_a_file_with_the_old_time_index_loses_it_and_keeps_its_events(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.db"
    store = SqliteHistoryStore(path)
    await store.open()
    stored = [r.event for r in await store.append([draft(1, "2025-01-01T00:00:01.000000Z")])]
    await store.close()
    with sqlite3.connect(path) as db:  # as files made before the index was dropped
        db.execute("CREATE INDEX events_topic_time ON events (topic, time_us)")
    assert "events_topic_time" in indexes(path)
    store = SqliteHistoryStore(path)
    await store.open()
    try:
        assert await store.read("s.t", 0, 10) == stored
    finally:
        await store.close()
    assert "events_topic_time" not in indexes(path)


async def test_reading_by_time_follows_seq_whatever_order_the_times_are_in(
    tmp_path: Path,
) -> None:
    store = SqliteHistoryStore(tmp_path / "h.db")
    await store.open()
    try:
        seconds = [5, 1, 7, 2, 9, 3]  # clocks of several publishers disagree
        times = [f"2025-01-01T00:00:0{s}.000000Z" for s in seconds]
        results = await store.append([draft(n, t) for n, t in enumerate(times, 1)])
        events = [r.event for r in results]
        since = "2025-01-01T00:00:04Z"
        assert await store.read_since_time("s.t", since, 10) == [events[0], events[2], events[4]]
        assert await store.read_since_time("s.t", since, 2) == [events[0], events[2]]
    finally:
        await store.close()


@pytest.mark.parametrize(
    "values",
    [
        # one second, then the next: the cached second and a fresh one
        ["2025-01-01T00:00:07.000001Z", "2025-01-01T00:00:07.999999Z", "2025-01-01T00:00:08.5Z"],
        ["2025-01-01T00:00:07.250000Z", "2025-01-01T00:00:07Z", "2025-01-01T01:00:07.250000+01:00"],
        ["2024-02-29T23:59:59.123456Z", "2024-02-29T23:59:59.000000Z", "2024-03-01T00:00:00.1Z"],
    ],
)
def test_event_times_agree_with_the_full_parser(values: list[str]) -> None:
    parse = _EventTimes()
    for value in values:
        assert parse(value) == rfc3339_micros(value), value


@pytest.mark.parametrize(
    "bad",
    [
        "2025-01-01T00:00:07.12345xZ",
        "2025-01-01T00:00:07.\uff11\uff12\uff13\uff14\uff15\uff16Z",  # fullwidth digits
        "2025-13-01T00:00:07.123456Z",
        "yesterday",
    ],
)
def test_event_times_refuse_what_the_full_parser_refuses(bad: str) -> None:
    parse = _EventTimes()
    assert parse("2025-01-01T00:00:07.000000Z") == rfc3339_micros("2025-01-01T00:00:07.000000Z")
    with pytest.raises(ValueError):
        parse(bad)


def test_enable_wal_waits_for_a_lock_sqlite_does_not_wait_for(tmp_path: Path) -> None:
    import threading

    from agentcast.storage.sqlite_wal import enable_wal

    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)  # no busy handler
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        conn.execute("PRAGMA journal_mode = WAL")
    release = threading.Timer(0.2, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        assert enable_wal(conn, timeout=10) == "wal"
    finally:
        release.join()
        conn.close()
        holder.close()


def test_several_processes_may_open_a_new_file_at_once(tmp_path: Path) -> None:
    """Opening converts the file to WAL; a second opener at that moment must wait, not fail
    (SQLite answers "database is locked" there without calling its busy handler)."""
    import subprocess
    import sys

    script = (
        "import asyncio, sys; from pathlib import Path;"
        "from agentcast.storage.sqlite import SqliteHistoryStore as S\n"
        "async def run():\n"
        "    s = S(Path(sys.argv[1])); await s.open(); await s.close()\n"
        "asyncio.run(run())"
    )
    for attempt in range(3):
        path = tmp_path / f"shared-{attempt}.db"
        openers = [
            subprocess.Popen([sys.executable, "-c", script, str(path)], stderr=subprocess.PIPE)
            for _ in range(6)
        ]
        failures = []
        for opener in openers:
            _, err = opener.communicate(timeout=60)
            if opener.returncode != 0:
                failures.append(err.decode(errors="replace")[-300:])
        assert failures == []
