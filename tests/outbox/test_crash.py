"""THE crash test: two relay processes over a 10,000-event stream on 50 keys, one of them
``kill -9``-ed 20 times while the stream is written (and restarted each time). Every
committed event must reach the node's history exactly once, each key in order, and nothing
from a rolled-back transaction may appear."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import IO

import pytest

from agentcast.client import Client, Subscription
from agentcast.node import Node
from tests.outbox.appdb import AppDb
from tests.outbox.conftest import TOPIC, node_config
from tests.outbox.helpers import history

EVENTS = 10_000
KEYS = 50
KILLS = 20
TXN_SIZE = 50


class RelayProcess:
    """``agentcast outbox relay`` as a child process with a short lease."""

    def __init__(self, directory: Path, index: int, dsn: str, node_url: str) -> None:
        self.args = [
            sys.executable,
            "-c",
            "from agentcast.cli import main; main()",
            "outbox",
            "relay",
            "--dsn",
            dsn,
            "--node",
            node_url,
            "--lease",
            "1.0",
            "--poll-interval",
            "0.1",
            "--log-level",
            "warning",
        ]
        self.log_path = directory / f"relay-{index}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        assert self.process is None
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log
        )

    def stop(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                os.kill(process.pid, sig)
            process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None


class Progress:
    """Counts the distinct outbox events a live subscriber has seen; wakes waiters."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self._changed = asyncio.Event()

    async def pump(self, sub: Subscription) -> None:
        while True:
            event = await sub.get()
            self.seen.add((event.payload["k"], event.payload["n"]))
            self._changed.set()

    async def wait_for(self, count: int, seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while len(self.seen) < count:
                self._changed.clear()
                await self._changed.wait()


async def crash_run(dsn: str, tmp_path: Path) -> None:
    app = await AppDb(dsn).open()
    async with Node(node_config(f"sqlite:///{tmp_path}/history.db")) as node:
        relays = [RelayProcess(tmp_path, i, dsn, node.ws_url) for i in range(2)]
        for relay in relays:
            relay.start()
        watcher = Client(node.ws_url)
        await watcher.connect()
        progress = Progress()
        pump = asyncio.create_task(
            progress.pump(await watcher.subscribe(TOPIC, buffer_size=4 * EVENTS))
        )
        try:
            counters: dict[str, int] = defaultdict(int)
            written = 0
            per_round = EVENTS // KILLS
            for round_no in range(KILLS):
                for start in range(0, per_round, TXN_SIZE):
                    await app.begin()
                    for i in range(TXN_SIZE):
                        key = f"key-{(written + start + i) % KEYS}"
                        await app.add(TOPIC, {"k": key, "n": counters[key]}, key=key)
                        counters[key] += 1
                    await app.commit()
                written += per_round
                await app.begin()
                await app.add(TOPIC, {"k": "rolled-back", "n": round_no}, key="key-0")
                await app.rollback()
                # Kill while the relays are busy: once they have delivered something new.
                await progress.wait_for(len(progress.seen) + 1, 60)
                victim = relays[round_no % 2]
                victim.stop(signal.SIGKILL)
                victim.start()
            await progress.wait_for(EVENTS, 120)
        finally:
            for relay in relays:
                relay.stop(signal.SIGTERM)
            await app.close()
            pump.cancel()
            await watcher.close()
        async with Client(node.ws_url) as reader:
            events = await history(reader, TOPIC, EVENTS)
            sub = await reader.subscribe(TOPIC, last=1)
            assert sub.position is not None
            assert sub.position.seq == EVENTS  # no row was accepted twice
        got = [(e.payload["k"], e.payload["n"]) for e in events]
        assert len(set(got)) == EVENTS
        assert set(got) == {(k, n) for k, total in counters.items() for n in range(total)}
        per_key: dict[str, list[int]] = defaultdict(list)
        for key, n in got:
            per_key[key].append(n)
        for key, ns in per_key.items():
            assert ns == sorted(ns), f"{key} out of order"
        assert all(r.process is None for r in relays)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_crash_postgres(pg_outbox: str, tmp_path: Path) -> None:
    await crash_run(pg_outbox, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_crash_sqlite(sqlite_outbox: str, tmp_path: Path) -> None:
    await crash_run(sqlite_outbox, tmp_path)
