"""Start any server of the fan-out benchmark, agentcast or a peer, and say how to reach it.

:func:`launch` starts the server's processes (each pinned to ``cpu`` from its first
instruction), waits for each one's readiness line (never sleeping), and returns a
:class:`Launched`: the URL the load connects to, the load's wire adapter, and the pids whose
CPU and RSS count as the server's. Every process started is appended to ``children`` as soon
as it exists, so the caller's ``finally`` stops it (:func:`~agentcast.bench.children.stop`)
even when a later step fails.

| server          | processes                                  | wire       |
| --------------- | ------------------------------------------ | ---------- |
| ``agentcast``   | a node (``bench.server_main``)             | agentcast  |
| ``naive``       | the picows baseline (``bench.server_main``)| agentcast  |
| ``socketio``    | python-socketio on aiohttp                 | socketio   |
| ``ws-redis``    | aiohttp front + its own ``redis-server``   | ws-redis   |
| ``nats-ws``     | ``nats-server`` with a WebSocket listener  | nats       |
| ``socketio-node``| node + socket.io 4 from npm               | socketio   |
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentcast.bench.children import BenchError, LineReader, spawn, wait_ready
from agentcast.bench.peers.nats import READY_MARK, nats_config
from agentcast.bench.peers.node import ensure_installed

HOST = "127.0.0.1"
SERVERS = ("agentcast", "naive", "socketio", "ws-redis", "nats-ws", "socketio-node")
REDIS_READY_MARK = "Ready to accept connections"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@dataclass(slots=True, frozen=True)
class Launched:
    """A running server: ``url`` for the load, its ``wire``, and the ``pids`` it is made of
    (the first is the one that serves WebSockets)."""

    url: str
    wire: str
    pids: tuple[int, ...]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that need one given)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def spawn_pinned(
    argv: list[str], cpu: int | None, *, merge_stderr: bool = False
) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``cpu`` (through :mod:`.pinned`) in a new session, stdout on
    a pipe (stderr too with ``merge_stderr``)."""
    where = "-" if cpu is None else str(cpu)
    return subprocess.Popen(
        [sys.executable, "-m", "agentcast.bench.peers.pinned", where, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else None,
        start_new_session=True,
    )


def wait_for_mark(reader: LineReader, mark: str, timeout: float) -> None:
    """Read lines until one contains ``mark`` (within ``timeout`` in all), then keep reading
    and discarding the rest of the output in a daemon thread, so a chatty server never
    blocks on a full pipe."""
    deadline = time.monotonic() + timeout
    while mark not in reader.next_line(max(0.001, deadline - time.monotonic())):
        pass
    assert reader.proc.stdout is not None
    own = os.dup(reader.proc.stdout.fileno())  # the thread's own descriptor, closed by it
    threading.Thread(target=_discard, args=(own,), daemon=True).start()


def _discard(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def launch(
    server: str,
    cpu: int | None,
    children: list[subprocess.Popen[bytes]],
    timeout: float,
    say: Callable[[str], None],
) -> Launched:
    """Start ``server`` (one of :data:`SERVERS`); see the module's docstring."""
    if server in ("agentcast", "naive"):
        proc = spawn("agentcast.bench.server_main", ["--server", server], cpu)
        children.append(proc)
        port = wait_ready(LineReader(proc), timeout)
        return Launched(f"ws://{HOST}:{port}/v1/ws", "agentcast", (proc.pid,))
    if server == "socketio":
        proc = spawn("agentcast.bench.peers.socketio_server", [], cpu)
        children.append(proc)
        port = wait_ready(LineReader(proc), timeout)
        return Launched(f"ws://{HOST}:{port}{SIO_PATH}", "socketio", (proc.pid,))
    if server == "ws-redis":
        return _launch_ws_redis(cpu, children, timeout, say)
    if server == "nats-ws":
        return _launch_nats(cpu, children, timeout)
    if server == "socketio-node":
        say("  installing socket.io from npm (once, into the cache) if needed")
        script = ensure_installed()
        proc = spawn_pinned(["node", str(script)], cpu)
        children.append(proc)
        port = wait_ready(LineReader(proc), timeout)
        return Launched(f"ws://{HOST}:{port}{SIO_PATH}", "socketio", (proc.pid,))
    raise BenchError(f"unknown server {server!r}")


def _launch_ws_redis(
    cpu: int | None,
    children: list[subprocess.Popen[bytes]],
    timeout: float,
    say: Callable[[str], None],
) -> Launched:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("the ws-redis peer needs redis-server on PATH")
    redis_port = free_port()
    argv = [binary, "--port", str(redis_port), "--bind", HOST, "--save", ""]
    argv += ["--appendonly", "no"]
    redis = spawn_pinned(argv, cpu)
    children.append(redis)
    wait_for_mark(LineReader(redis, "redis-server"), REDIS_READY_MARK, timeout)
    say(f"  redis-server pid {redis.pid} on {HOST}:{redis_port}")
    front = spawn("agentcast.bench.peers.ws_redis_server", [f"--redis-port={redis_port}"], cpu)
    children.append(front)
    port = wait_ready(LineReader(front), timeout)
    return Launched(f"ws://{HOST}:{port}/ws", "ws-redis", (front.pid, redis.pid))


def _launch_nats(
    cpu: int | None, children: list[subprocess.Popen[bytes]], timeout: float
) -> Launched:
    binary = shutil.which("nats-server")
    if binary is None:
        raise BenchError("the nats-ws peer needs nats-server on PATH")
    ws_port = free_port()
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-nats-") as directory:
        config = Path(directory) / "nats.conf"
        config.write_text(nats_config(free_port(), ws_port))
        proc = spawn_pinned([binary, "-c", str(config)], cpu, merge_stderr=True)
        children.append(proc)
        wait_for_mark(LineReader(proc, "nats-server"), READY_MARK, timeout)
    return Launched(f"ws://{HOST}:{ws_port}/", "nats", (proc.pid,))
