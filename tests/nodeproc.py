"""Nodes as real processes (`agentcast serve`) on free loopback ports, for crash tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

READY_ATTEMPTS = 600  # x READY_POLL seconds at most, per start
READY_POLL = 0.05


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``agentcast serve`` as a child process on fixed loopback ports; ``config`` is the
    TOML text of its config file (written to ``directory/node.toml``)."""

    def __init__(self, directory: Path, config: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.http_port = free_port()
        self.config = directory / "node.toml"
        self.config.write_text(config)
        self.log_path = directory / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self) -> None:
        assert self.process is None
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from agentcast.cli import main; main()",
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                "--http-port",
                str(self.http_port),
            ],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.starts += 1

    async def wait_ready(self) -> None:
        """Poll ``GET /readyz`` until it answers 200 (bounded in attempts)."""
        for _ in range(READY_ATTEMPTS):
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"the node exited early:\n{self.log_path.read_text()}")
            if await self._ready():
                return
            await asyncio.sleep(READY_POLL)
        pytest.fail(f"the node did not become ready:\n{self.log_path.read_text()}")

    async def _ready(self) -> bool:
        try:
            async with asyncio.timeout(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.http_port)
                try:
                    writer.write(
                        b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                    )
                    await writer.drain()
                    status = await reader.readline()
                finally:
                    writer.close()
                    await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return status.split(b" ")[1:2] == [b"200"]

    def kill(self) -> None:
        """``kill -9`` and reap the child."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        if self._log is not None:
            self._log.close()
            self._log = None
