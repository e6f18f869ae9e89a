"""The orchestrating side of the benchmarks' child processes (used by the parent only).

* :func:`spawn` starts ``python -m MODULE ARGS --cpu=N`` in its own session (a Ctrl-C
  reaches only the parent), with stdout on a pipe.
* :class:`LineReader` reads the child's stdout line by line with a deadline and never
  sleeps: :func:`wait_ready` turns the first line into the port of ``READY <port>``.
* :func:`last_json_line` parses the one JSON object a load process prints last.
* :func:`stop` always ends and reaps a child: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from typing import Any

from agentcast.bench.process import parse_ready

STOP_GRACE = 5.0


class BenchError(Exception):
    """The benchmark could not produce a result (the message says why)."""


def cpu_note(cpu: int | None) -> str:
    """``", pinned to CPU n"`` or why the child is not pinned (for progress lines)."""
    return f", pinned to CPU {cpu}" if cpu is not None else ", not pinned (fewer than 2 CPUs)"


def spawn(module: str, args: list[str], cpu: int | None) -> subprocess.Popen[bytes]:
    """Start ``python -m module *args`` (plus ``--cpu=N`` when pinned) in a new session."""
    cpu_args = [f"--cpu={cpu}"] if cpu is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", module, *args, *cpu_args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )


class LineReader:
    """Whole lines from a child's stdout pipe, each read within a deadline.

    Bytes after a returned line are kept for the next call, so a child may print several
    lines in one write.
    """

    def __init__(self, proc: subprocess.Popen[bytes], what: str = "the server") -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.what = what
        self._fd = proc.stdout.fileno()
        self._buffer = b""

    def next_line(self, timeout: float) -> str:
        """The next line (without its newline); :class:`BenchError` on timeout or EOF."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"{self.what} printed no line within {timeout:g} s")
                if not selector.select(remaining):
                    continue
                chunk = os.read(self._fd, 4096)
                if not chunk:
                    raise BenchError(f"{self.what} exited (status {self.proc.wait()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


def wait_ready(reader: LineReader, timeout: float) -> int:
    """The port of the child's ``READY <port>`` line, read within ``timeout`` seconds."""
    try:
        line = reader.next_line(timeout)
    except BenchError as exc:
        raise BenchError(f"the server was not ready: {exc}") from None
    try:
        return parse_ready(line)
    except ValueError as exc:
        raise BenchError(f"unexpected server output: {exc}") from None


def last_json_line(out: bytes, what: str = "the load process") -> dict[str, Any]:
    """The JSON object on the last non-empty line of ``out``."""
    lines = [line for line in out.decode().splitlines() if line.strip()]
    if not lines:
        raise BenchError(f"{what} printed no result")
    try:
        measured = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise BenchError(f"{what} printed no JSON result: {exc}") from None
    if not isinstance(measured, dict):
        raise BenchError(f"{what} printed no JSON object")
    return measured


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after :data:`STOP_GRACE` seconds; always reaps and closes pipes."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
