"""``agentcast bench outbox``: commit-to-delivered latency and throughput through a relay.

Processes: a node (``agentcast serve``, durable ``bench.>`` topics on a SQLite history) and
one relay (``agentcast outbox relay``) as children; this process writes the outbox on
PostgreSQL (``writers`` asyncpg connections, a throwaway schema dropped afterwards) and
subscribes to the topic. Latency is from the writer's COMMIT returning to the subscriber
receiving the event, both in this process (monotonic clock).

Phases: ``latency``: ``rate`` events/s for ``seconds``, one event per transaction;
``throughput``: the relay is paused (SIGSTOP), ``messages`` events are committed in
transactions of ``batch`` by ``writers`` concurrent writers, the relay is resumed
(SIGCONT) and events/s is counted from the resume to the last delivery: the rate the relay
sustains on a backlog, independent of how fast this process can write.
"""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from agentcast.bench.report import emit_result
from agentcast.bench.stats import latency_summary_ms
from agentcast.client import Client
from agentcast.outbox.schema import init_outbox
from agentcast.outbox.writer import add

TOPIC = "bench.outbox.events"
KEYS = 50
READY_ATTEMPTS = 400
READY_POLL = 0.05


class BenchError(Exception):
    """A phase could not run or finish in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _spawn(args: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "from agentcast.cli import main; main()", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


async def _connect(url: str) -> Client:
    for _ in range(READY_ATTEMPTS):
        client = Client(url, reconnect=True, max_reconnect_attempts=1)
        try:
            await client.connect()
            return client
        except Exception:
            await client.close()
            await asyncio.sleep(READY_POLL)
    raise BenchError(f"node at {url} did not start")


class _Receiver:
    """Collects delivery times of ``{"i": n}`` payloads."""

    def __init__(self) -> None:
        self.delivered: dict[int, float] = {}
        self._waiting: tuple[int, asyncio.Future[None]] | None = None

    async def pump(self, client: Client) -> None:
        sub = await client.subscribe(TOPIC, dedupe_window=0, buffer_size=1_000_000)
        while True:
            event = await sub.get()
            payload = event.payload
            if isinstance(payload, dict) and "i" in payload:
                self.delivered.setdefault(int(payload["i"]), time.monotonic())
                waiting = self._waiting
                if (
                    waiting is not None
                    and len(self.delivered) >= waiting[0]
                    and not waiting[1].done()
                ):
                    waiting[1].set_result(None)

    async def wait_for(self, count: int, max_wait: float) -> None:
        if len(self.delivered) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting = (count, future)
        try:
            await asyncio.wait_for(future, max_wait)
        except TimeoutError:
            raise BenchError(f"only {len(self.delivered)} of {count} delivered") from None
        finally:
            self._waiting = None


async def _write(conn: Any, schema: str, first: int, count: int, commits: dict[int, float]) -> None:
    async with conn.transaction():
        for i in range(first, first + count):
            await add(conn, TOPIC, {"i": i}, key=f"k{i % KEYS}", schema=schema)
    now = time.monotonic()
    for i in range(first, first + count):
        commits[i] = now


def _latencies(commits: dict[int, float], delivered: dict[int, float], ids: range) -> list[int]:
    return [int((delivered[i] - commits[i]) * 1e9) for i in ids if i in delivered]


async def _pooled_write(
    pool: Any, schema: str, first: int, count: int, commits: dict[int, float]
) -> None:
    async with pool.acquire() as conn:
        await _write(conn, schema, first, count, commits)


async def _latency_phase(
    pool: Any, schema: str, receiver: _Receiver, first: int, rate: float, seconds: float
) -> dict[str, Any]:
    count = int(rate * seconds)
    commits: dict[int, float] = {}
    writes: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for n in range(count):
        due = start + n / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        writes.append(asyncio.create_task(_pooled_write(pool, schema, first + n, 1, commits)))
    await asyncio.gather(*writes)
    written_s = time.monotonic() - start
    await receiver.wait_for(first + count, 120.0)
    ids = range(first, first + count)
    return {
        "target_rate": rate,
        "events": count,
        "achieved_write_rate": round(count / written_s, 1),
        "latency_ms": latency_summary_ms(_latencies(commits, receiver.delivered, ids)),
    }


async def _throughput_phase(
    relay: subprocess.Popen[bytes],
    pool: Any,
    schema: str,
    receiver: _Receiver,
    first: int,
    messages: int,
    batch: int,
    writers: int,
) -> dict[str, Any]:
    commits: dict[int, float] = {}
    offsets = list(range(0, messages, batch))

    async def writer(index: int) -> None:
        for offset in offsets[index::writers]:
            count = min(batch, messages - offset)
            await _pooled_write(pool, schema, first + offset, count, commits)

    relay.send_signal(signal.SIGSTOP)
    try:
        write_start = time.monotonic()
        await asyncio.gather(*(writer(i) for i in range(writers)))
        written_s = time.monotonic() - write_start
    finally:
        start = time.monotonic()
        relay.send_signal(signal.SIGCONT)
    await receiver.wait_for(first + messages, 300.0)
    ids = range(first, first + messages)
    last = max(receiver.delivered[i] for i in ids)
    duration = last - start
    return {
        "events": messages,
        "events_per_txn": batch,
        "writers": writers,
        "write_s": round(written_s, 3),
        "written_per_s": round(messages / written_s, 1),
        "duration_s": round(duration, 3),
        "events_per_s": round(messages / duration, 1),
        "latency_ms": latency_summary_ms(_latencies(commits, receiver.delivered, ids)),
    }


async def run_outbox_bench(
    *,
    pg_dsn: str,
    rate: float,
    seconds: float,
    messages: int,
    batch: int,
    partitions: int,
    relay_batch: int,
    pipeline: int,
    writers: int,
) -> dict[str, Any]:
    """Run both phases once; return the JSON-ready result."""
    import asyncpg

    schema = f"agentcast_outbox_bench_{uuid.uuid4().hex[:12]}"
    await init_outbox(f"{pg_dsn}?schema={schema}", partitions)
    with tempfile.TemporaryDirectory(prefix="agentcast-outbox-bench-") as tmp:
        directory = Path(tmp)
        port, http_port = _free_port(), _free_port()
        (directory / "node.toml").write_text(
            f'history = "sqlite:///{directory / "history.db"}"\n'
            'durable = ["bench.>"]\nlog_level = "warning"\n'
        )
        log = (directory / "children.log").open("ab")
        node = _spawn(
            [
                "serve",
                "--config",
                str(directory / "node.toml"),
                "--port",
                str(port),
                "--http-port",
                str(http_port),
            ],
            log,
        )
        url = f"ws://127.0.0.1:{port}/v1/ws"
        relay: subprocess.Popen[bytes] | None = None
        pool = await asyncpg.create_pool(pg_dsn, min_size=writers, max_size=writers)
        pump: asyncio.Task[None] | None = None
        try:
            reader = await _connect(url)
            receiver = _Receiver()
            pump = asyncio.create_task(receiver.pump(reader))
            relay = _spawn(
                [
                    "outbox",
                    "relay",
                    "--dsn",
                    f"{pg_dsn}?schema={schema}",
                    "--node",
                    url,
                    "--batch-size",
                    str(relay_batch),
                    "--log-level",
                    "warning",
                ],
                log,
            )
            # Warm-up: the relay is up once one event went through.
            await _pooled_write(pool, schema, 0, 1, {})
            await receiver.wait_for(1, 60.0)
            latency = await _latency_phase(pool, schema, receiver, 1, rate, seconds)
            first = 1 + int(rate * seconds)
            throughput = await _throughput_phase(
                relay, pool, schema, receiver, first, messages, batch, writers
            )
            await reader.close()
        finally:
            if pump is not None:
                pump.cancel()
            for child in (relay, node):
                if child is not None and child.poll() is None:
                    child.terminate()
                    try:
                        child.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
            log.close()
            await pool.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await pool.close()
    return {
        "bench": "outbox",
        "store": "postgres",
        "topic": "durable (node history: sqlite)",
        "partitions": partitions,
        "relays": 1,
        "relay_batch": relay_batch,
        "pipeline": pipeline,
        "latency": latency,
        "throughput": throughput,
        "targets": {
            "p99_ms_at_1000_per_s": 50.0,
            "sustained_events_per_s": 5000.0,
        },
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def run_outbox_cli(
    *,
    pg_dsn: str,
    rate: float,
    seconds: float,
    messages: int,
    batch: int,
    partitions: int,
    relay_batch: int,
    pipeline: int,
    writers: int,
    as_json: bool,
    output: str | None,
) -> int:
    """Run the outbox benchmark and print its JSON line; 0 on a result, 2 on failure."""
    if min(messages, batch, partitions, pipeline, writers) < 1 or rate <= 0 or seconds <= 0:
        print(
            "agentcast bench outbox: rate, seconds, messages, batch must be positive",
            file=sys.stderr,
        )
        return 2
    try:
        result = asyncio.run(
            run_outbox_bench(
                pg_dsn=pg_dsn,
                rate=rate,
                seconds=seconds,
                messages=messages,
                batch=batch,
                partitions=partitions,
                relay_batch=relay_batch,
                pipeline=pipeline,
                writers=writers,
            )
        )
    except (BenchError, OSError) as exc:
        print(f"agentcast bench outbox: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    lat = result["latency"]["latency_ms"]
    summary = (
        f"latency at {rate:g}/s: p50 {lat['p50']} ms p99 {lat['p99']} ms; "
        f"throughput {result['throughput']['events_per_s']} events/s"
    )
    emit_result(result, output=output, summary=None if as_json else summary)
    return 0
