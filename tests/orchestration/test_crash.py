"""kill -9 of the orchestrator: between receiving an event and committing its transition,
between committing and publishing its intents, and at random moments under load. Every
event must change its instance exactly once and every intent must be published exactly
once, in each instance's order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from agentcast.client import Client
from agentcast.node import Node
from agentcast.orchestration.db import open_db
from agentcast.orchestration.engine import Engine
from agentcast.orchestration.store import WorkflowStore
from agentcast.protocol.envelope import Envelope
from tests.orchestration.crashflow import IN, OUT, tally
from tests.outbox.helpers import history

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0


class OrchestratorProcess:
    """``agentcast orchestrate tests.orchestration.crashflow:ALL`` as a child process."""

    def __init__(self, dsn: str, url: str, marker: Path, *, relay: bool = True) -> None:
        self.args = [
            "-c", "from agentcast.cli import main; main()", "orchestrate",
            "tests.orchestration.crashflow:ALL", "--db", dsn, "--node", url,
            "--progress", "0", "--ack-timeout", "5", "--batch", "32", "--log-level", "warning",
        ]  # fmt: skip
        if not relay:
            self.args.append("--no-relay")
        self.env = {**os.environ, "TALLY_CRASH_MARKER": str(marker)}
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, cwd=ROOT, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(ready))
        try:
            await asyncio.wait_for(ready, READY_TIMEOUT)
        except TimeoutError:
            pytest.fail("the orchestrator did not start:\n" + "".join(self.output))

    async def _read(self, ready: asyncio.Future[None]) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            self.output.append(line)
            if line.startswith("orchestrating") and not ready.done():
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(AssertionError("exited:\n" + "".join(self.output)))

    async def wait(self) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), 60)
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader
        self.process = None
        return code

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            await self.wait()


@contextlib.asynccontextmanager
async def store_of(dsn: str) -> AsyncIterator[WorkflowStore]:
    store = WorkflowStore(open_db(dsn), Engine([tally]))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def counts_of(dsn: str, runs: list[str]) -> dict[str, int]:
    """Each run's committed count (-1: no instance)."""
    counts = {}
    async with store_of(dsn) as store:
        for run in runs:
            instance = await store.instance("tally", run)
            counts[run] = -1 if instance is None else orjson.loads(instance.state)["count"]
    return counts


async def assert_counts(dsn: str, expected: dict[str, int]) -> None:
    """Every run's count is as expected (call it once the outputs arrived: an output is
    published only after its transition committed)."""
    assert await counts_of(dsn, list(expected)) == expected


async def wait_for_counts(dsn: str, expected: dict[str, int], seconds: float) -> None:
    """Poll the store (bounded) until every run's count is as expected: for an
    orchestrator that publishes nothing (``--no-relay``), where no event says it is done."""
    for _ in range(int(seconds / 0.1)):
        counts = await counts_of(dsn, list(expected))
        if counts == expected:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"counts {counts} != {expected}")


async def publish_run(client: Client, run: str, values: list[int], crash_at: int = -1) -> None:
    """A run's events, with the run as ``key`` header: the group never has two of them in
    flight at once, so even two orchestrators apply them in order."""
    headers = {"type": "start", "key": run}
    await client.publish(IN, None, headers=headers, correlation_id=run)
    for index, value in enumerate(values):
        payload = {"v": value, "crash": index == crash_at}
        headers = {"type": "add", "key": run}
        await client.publish(IN, payload, headers=headers, correlation_id=run)


def check_outputs(events: list[Envelope], runs: dict[str, list[int]]) -> None:
    """Exactly one output per input, each run's outputs in order."""
    per_run: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for event in events:
        per_run[event.payload["run"]].append((event.payload["count"], event.payload["v"]))
    for run, values in runs.items():
        assert per_run[run] == [(i + 1, v) for i, v in enumerate(values)], run


@pytest.mark.timeout(120)
async def test_kill_between_receiving_and_committing(dnode: Node, tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path}/wf.db"
    marker = tmp_path / "crash-once"
    marker.touch()
    orchestrator = OrchestratorProcess(dsn, dnode.ws_url, marker)
    await orchestrator.start()
    values = list(range(1, 11))
    async with Client(dnode.ws_url) as client:
        await publish_run(client, "run-a", values, crash_at=4)
        assert await orchestrator.wait() == -signal.SIGKILL  # died inside the handler
        assert not marker.exists()
        await orchestrator.start()
        try:
            events = await history(client, OUT, 10)
            await assert_counts(dsn, {"run-a": 10})
        finally:
            await orchestrator.kill(signal.SIGTERM)
    check_outputs(events, {"run-a": values})


@pytest.mark.timeout(120)
async def test_kill_between_committing_and_publishing(dnode: Node, tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path}/wf.db"
    marker = tmp_path / "never"
    committing = OrchestratorProcess(dsn, dnode.ws_url, marker, relay=False)
    await committing.start()
    values = [5, 6, 7, 8]
    async with Client(dnode.ws_url) as client:
        await publish_run(client, "run-b", values)
        await wait_for_counts(dsn, {"run-b": 4}, 60)
        await committing.kill()
        out = await client.subscribe(OUT, last=10)
        assert out.position is None or out.position.seq == 0  # nothing published yet
        relaying = OrchestratorProcess(dsn, dnode.ws_url, marker)
        await relaying.start()
        try:
            events = [await asyncio.wait_for(out.get(), 30) for _ in values]
            check_outputs(events, {"run-b": values})
            async with store_of(dsn) as store:
                instance = await store.instance("tally", "run-b")
            assert instance is not None and orjson.loads(instance.state)["sum"] == sum(values)
        finally:
            await relaying.kill(signal.SIGTERM)
        assert len(await history(client, OUT, len(values))) == len(values)


@pytest.mark.timeout(120)
async def test_timer_fires_once_after_a_crash(dnode: Node, tmp_path: Path) -> None:
    dsn = f"sqlite:///{tmp_path}/wf.db"
    orchestrator = OrchestratorProcess(dsn, dnode.ws_url, tmp_path / "never")
    await orchestrator.start()
    async with Client(dnode.ws_url) as client:
        out = await client.subscribe(OUT)
        await publish_run(client, "run-t", [1])
        await client.publish(
            IN, {"after": 1.0, "note": "n1"}, headers={"type": "remind"}, correlation_id="run-t"
        )
        await asyncio.wait_for(out.get(), 30)  # the add's output: the timer is committed too
        async with store_of(dsn) as store:
            (due,) = await store.due(2**62)
        await orchestrator.kill()
        # Let the timer come due while no orchestrator runs.
        await asyncio.sleep(max(0.0, due.due_us / 1e6 - time.time()) + 0.2)
        await orchestrator.start()
        try:
            reminder = await asyncio.wait_for(out.get(), 30)
            assert reminder.payload == {"run": "run-t", "reminder": "n1"}
            await assert_counts(dsn, {"run-t": 1})
            async with store_of(dsn) as store:
                instance = await store.instance("tally", "run-t")
                assert await store.next_due_us() is None
        finally:
            await orchestrator.kill(signal.SIGTERM)
        assert instance is not None and orjson.loads(instance.state)["reminded"] == 1
        last = await client.subscribe(OUT, last=1)
        assert last.position is not None and last.position.seq == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_random_kills_under_load(dnode: Node, wf_dsn: str, tmp_path: Path) -> None:
    """Two orchestrators share the group and the database; one at a time is killed -9
    and restarted while events flow: the other takes over its deliveries."""
    rng = random.Random(7)
    runs = {f"run-{n}": [rng.randrange(100) for _ in range(30)] for n in range(20)}
    total = sum(len(v) for v in runs.values())
    orchestrators = [
        OrchestratorProcess(wf_dsn, dnode.ws_url, tmp_path / "never") for _ in range(2)
    ]
    for orchestrator in orchestrators:
        await orchestrator.start()
    async with Client(dnode.ws_url) as client:
        out = await client.subscribe(OUT, buffer_size=4 * total)
        seen: set[tuple[str, int]] = set()

        async def wait_outputs(count: int) -> None:
            async with asyncio.timeout(60):
                while len(seen) < count:
                    event = await out.get()
                    seen.add((event.payload["run"], event.payload["count"]))

        publisher = asyncio.gather(
            *(publish_run(client, run, values) for run, values in runs.items())
        )
        try:
            for kill in range(4):
                await wait_outputs(len(seen) + 1)
                victim = orchestrators[kill % 2]
                await victim.kill()
                await victim.start()
            await publisher
            await wait_outputs(total)
            await assert_counts(wf_dsn, {run: len(v) for run, v in runs.items()})
        finally:
            for orchestrator in orchestrators:
                await orchestrator.kill(signal.SIGTERM)
        events = await history(client, OUT, total)
        last = await client.subscribe(OUT, last=1)
        assert last.position is not None
        assert last.position.seq == total  # no intent published twice
    check_outputs(events, runs)
