"""Child processes of a chaos scenario: ``agentcast serve`` nodes and private broker servers.

Every process listens on free loopback ports chosen here, is started and stopped by the
scenario (``kill -9`` included), and is always reaped by :meth:`stop` in a ``finally``.
Readiness is polled with a bound on attempts; a process that exits early is reported with
the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import psutil

from agentcast.chaos.invariants import Sample

READY_ATTEMPTS = 400
READY_POLL = 0.05
LOG_TAIL = 2000


class ChaosError(Exception):
    """A scenario could not run (a process did not start, a phase timed out)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def port_open(port: int) -> bool:
    """Whether 127.0.0.1:``port`` accepts a TCP connection now."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def http_get(port: int, path: str, within: float = 5.0) -> tuple[int, str]:
    """``GET path`` on 127.0.0.1:``port``: (status, body); (0, "") when unreachable."""
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return 0, ""
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, body.decode(errors="replace")


def metric(text: str, name: str) -> float:
    """The sum of every sample of metric ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Child:
    """A child process with its output in ``directory/<name>.log``."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.name = name
        self.log_path = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        if self.process is not None:
            raise ChaosError(f"{self.name} is already running")
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self.starts += 1

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ChaosError(f"{self.name} is not running")
        return self.process.pid

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise ChaosError(f"{self.name} exited early:\n{self.log_tail()}")

    def kill(self) -> None:
        """``kill -9`` and reap (no-op when not running)."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 5 s; always reaps (no-op when not running)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        self.kill()


class NodeProcess(Child):
    """``agentcast serve`` with ``config`` (TOML text) on fixed free loopback ports, so a
    restart comes back where its clients reconnect."""

    def __init__(self, directory: Path, config: str, name: str = "node") -> None:
        super().__init__(directory, name)
        self.port = free_port()
        self.http_port = free_port()
        self.config_path = directory / f"{name}.toml"
        self.config_path.write_text(config)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from agentcast.cli import main; main()",
            "serve",
            "--config",
            str(self.config_path),
            "--port",
            str(self.port),
            "--http-port",
            str(self.http_port),
        ]

    async def wait_ready(self, attempts: int = READY_ATTEMPTS) -> None:
        """Poll ``/readyz`` until it answers 200."""
        for _ in range(attempts):
            self.check_alive()
            if (await http_get(self.http_port, "/readyz", within=2.0))[0] == 200:
                return
            await asyncio.sleep(READY_POLL)
        raise ChaosError(f"{self.name} did not become ready:\n{self.log_tail()}")

    async def wait_status(self, status: int, attempts: int = READY_ATTEMPTS) -> bool:
        """Poll ``/readyz`` until it answers ``status``; whether it did within the bound."""
        for _ in range(attempts):
            self.check_alive()
            if (await http_get(self.http_port, "/readyz", within=2.0))[0] == status:
                return True
            await asyncio.sleep(READY_POLL)
        return False

    async def metrics(self) -> str:
        return (await http_get(self.http_port, "/metrics"))[1]

    def sample(self, phase: str) -> Sample:
        """The node's RSS and open fds now, labelled ``phase``."""
        proc = psutil.Process(self.pid)
        return Sample(phase, int(proc.memory_info().rss), int(proc.num_fds()))


def _nats_binary() -> str:
    return shutil.which("nats-server") or "/usr/sbin/nats-server"


class BrokerProcess(Child):
    """A private ``redis-server`` (no persistence) or ``nats-server`` on a free port."""

    KINDS = ("redis", "nats")

    def __init__(self, kind: str, directory: Path) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown broker {kind!r}")
        super().__init__(directory, kind)
        self.kind = kind
        self.port = free_port()

    def url(self, port: int | None = None) -> str:
        """The node's ``broker`` URL, for this server or a proxy in front of it."""
        port = self.port if port is None else port
        if self.kind == "redis":
            return f"redis://127.0.0.1:{port}/0"
        return f"nats://127.0.0.1:{port}"

    def command(self) -> list[str]:
        if self.kind == "redis":
            return [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ]
        return [_nats_binary(), "-a", "127.0.0.1", "-p", str(self.port)]

    async def wait_ready(self, attempts: int = READY_ATTEMPTS) -> None:
        for _ in range(attempts):
            self.check_alive()
            if await port_open(self.port):
                return
            await asyncio.sleep(READY_POLL)
        raise ChaosError(f"{self.kind} did not start:\n{self.log_tail()}")
