"""``agentcast bench sessions``: many sessions of agents and observers on one node.

The parent only orchestrates; the work happens in child processes started with
``sys.executable -m``, each in its own session (a Ctrl-C reaches only the parent):

* the **server** (:mod:`agentcast.bench.sessions_server`), pinned to the first allowed CPU
  when there are at least two, prints ``READY <port>`` once it listens and one ``STATS``
  line per SIGUSR1;
* ``processes`` **loads** (:mod:`agentcast.bench.sessions_load`), pinned to the second CPU,
  each holding a contiguous share of the sessions; each prints ``CONNECTED <n>`` and waits.

Once every load is connected the parent writes ``GO <t0>`` to each (``t0`` a shared
``time.monotonic_ns()`` shortly ahead), reads the node's counters and the CPU time of the
server and the loads at ``t0 + warmup`` and at ``t0 + warmup + seconds`` (the measured
window), collects each load's JSON line and latency files, reads the counters once more,
and hands everything to :func:`agentcast.bench.sessions_result.build_result`. The result is
printed as one JSON object (plus a summary on stderr unless ``as_json``) and appended to
``output`` when given. Every child is always stopped, whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agentcast.bench.children import BenchError, LineReader, cpu_note, spawn, stop, wait_ready
from agentcast.bench.process import pick_cpus
from agentcast.bench.report import emit_result
from agentcast.bench.sessions_load import CONNECTED_PREFIX, GO_PREFIX, LoadArgs
from agentcast.bench.sessions_plan import (
    SessionsPlan,
    messages_of,
    publish_rate,
    split_sessions,
)
from agentcast.bench.sessions_result import Window, build_result, summary
from agentcast.bench.sessions_server import parse_stats

HOST = "127.0.0.1"
POLICIES = ("disconnect", "drop_oldest", "drop_newest")
SERVER_READY_TIMEOUT = 30.0
CONNECT_BASE_TIMEOUT = 30.0
CONNECT_TIMEOUT_PER_CONNECTION = 0.02
GO_LEAD = 0.2
STATS_TIMEOUT = 30.0
DRAIN_TIMEOUT = 10.0
RESULT_GRACE = 120.0

__all__ = ["BenchError", "NodeOptions", "run_sessions", "run_sessions_cli"]


@dataclass(slots=True, frozen=True)
class NodeOptions:
    """The server's outbound queue bound, the subscriptions' slow-consumer policy (``None``:
    the node's default, ``disconnect``), and whether to pin the server and the loads to
    separate CPUs (else the kernel places them)."""

    max_queue_messages: int
    policy: str | None
    pin: bool = True


def run_sessions_cli(
    plan: SessionsPlan, options: NodeOptions, *, as_json: bool, output: str | None
) -> int:
    """Run the benchmark once and print its JSON result; return the exit status.

    0: a result where every expected delivery arrived and every publish was acked;
    1: a result showing missing deliveries or failed publishes; 2: bad arguments or no
    result (a child failed, a phase timed out); 130: interrupted.
    """
    problem = plan.problem()
    if problem is None and options.policy is not None and options.policy not in POLICIES:
        problem = f"--policy must be one of {', '.join(POLICIES)}"
    if problem is None and options.max_queue_messages < 1:
        problem = "--max-queue-messages must be at least 1"
    if problem is not None:
        print(f"agentcast bench sessions: {problem}", file=sys.stderr)
        return 2
    pinned = pick_cpus() if options.pin else (None, None)
    loadavg_before = round(os.getloadavg()[0], 2)
    try:
        loads, samples, window = run_sessions(plan, options, pinned, quiet=as_json)
    except BenchError as exc:
        print(f"agentcast bench sessions: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentcast bench sessions: interrupted", file=sys.stderr)
        return 130
    result = build_result(plan, loads, samples, window, pinned, loadavg_before)
    emit_result(result, output=output, summary=None if as_json else summary(result))
    ok = result["missing"] == 0 and result["publish_errors"] == 0
    return 0 if ok and result["acked"] == result["published"] else 1


def _spawn_load(args: list[str], cpu: int | None) -> subprocess.Popen[bytes]:
    cpu_args = [f"--cpu={cpu}"] if cpu is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", "agentcast.bench.sessions_load", *args, *cpu_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )


def _sleep_until(deadline_ns: int) -> None:
    """Wait for a point of the shared schedule (the window bounds are times, not events)."""
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _runqueue_wait(pids: list[int]) -> float | None:
    """Seconds the main threads of ``pids`` have spent runnable but waiting for a CPU
    (the second field of ``/proc/<pid>/schedstat``); ``None`` where it cannot be read."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/schedstat").read_text().split()
            total += int(fields[1])
        except (OSError, IndexError, ValueError):
            return None
    return total / 1e9


def _difference(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _read_samples(prefix: str, processes: int, suffix: str) -> array[int]:
    values: array[int] = array("q")
    for k in range(processes):
        values.frombytes(Path(f"{prefix}{k}.{suffix}").read_bytes())
    return values


def run_sessions(
    plan: SessionsPlan,
    options: NodeOptions,
    pinned: tuple[int | None, int | None],
    *,
    quiet: bool,
) -> tuple[list[dict[str, Any]], dict[str, array[int]], Window]:
    """Start the server and the loads, run the schedule, collect, stop every child."""
    server_cpu, load_cpu = pinned

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    def note(cpu: int | None) -> str:
        return cpu_note(cpu) if options.pin else ", not pinned (--no-pin)"

    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="agentcast-sessions-") as tmp:
        prefix = str(Path(tmp) / "load-")
        try:
            say(f"sessions: starting the server ({plan.connections} connections to come)")
            server_args = [f"--max-queue-messages={options.max_queue_messages}"]
            server = spawn("agentcast.bench.sessions_server", server_args, server_cpu)
            children.append(server)
            server_out = LineReader(server)
            port = wait_ready(server_out, SERVER_READY_TIMEOUT)
            say(f"  server pid {server.pid} on {HOST}:{port}" + note(server_cpu))
            shares = split_sessions(plan.sessions, plan.processes)
            per_session = plan.agents + plan.observers
            connect_timeout = CONNECT_BASE_TIMEOUT + CONNECT_TIMEOUT_PER_CONNECTION * (
                per_session * max(count for _, count in shares) + plan.global_observers
            )
            go_timeout = connect_timeout * plan.processes + STATS_TIMEOUT
            rate = publish_rate(plan)
            rates = [rate * count / plan.sessions for _, count in shares]
            everything = sum(messages_of(r, plan.warmup + plan.seconds) for r in rates)
            loads: list[tuple[subprocess.Popen[bytes], LineReader]] = []
            for k, (first, count) in enumerate(shares):
                args = LoadArgs(
                    url=f"ws://{HOST}:{port}/v1/ws",
                    first=first,
                    count=count,
                    agents=plan.agents,
                    observers=plan.observers,
                    rate=rates[k],
                    seconds=plan.seconds,
                    warmup=plan.warmup,
                    size=plan.size,
                    direct=plan.direct,
                    policy=options.policy,
                    out=f"{prefix}{k}",
                    connect_timeout=connect_timeout,
                    go_timeout=go_timeout,
                    drain_timeout=DRAIN_TIMEOUT,
                    concurrency=100,
                    global_observers=plan.global_observers if k == 0 else 0,
                    global_messages=everything if k == 0 else 0,
                )
                proc = _spawn_load(args.to_args(), load_cpu)
                children.append(proc)
                loads.append((proc, LineReader(proc, f"load process {k}")))
            say(f"  {plan.processes} load process(es) connecting" + note(load_cpu))
            for _, out in loads:
                line = out.next_line(connect_timeout + STATS_TIMEOUT)
                if not line.startswith(CONNECTED_PREFIX):
                    raise BenchError(f"unexpected load output: {line!r}")
            server_ps = psutil.Process(server.pid)
            load_ps = [psutil.Process(proc.pid) for proc, _ in loads]

            def snapshot() -> tuple[float, float, float | None, float | None, dict[str, Any]]:
                server.send_signal(signal.SIGUSR1)
                server_cpu_s = _cpu(server_ps)
                load_cpu_s = sum(_cpu(p) for p in load_ps)
                server_wait = _runqueue_wait([server.pid])
                load_wait = _runqueue_wait([proc.pid for proc, _ in loads])
                stats = parse_stats(server_out.next_line(STATS_TIMEOUT))
                return server_cpu_s, load_cpu_s, server_wait, load_wait, stats

            t0 = time.monotonic_ns() + int(GO_LEAD * 1e9)
            for proc, _ in loads:
                assert proc.stdin is not None
                proc.stdin.write(f"{GO_PREFIX}{t0}\n".encode())
                proc.stdin.flush()
            say(
                f"  publishing {rate:.1f}/s for {plan.warmup:g} s warmup + "
                f"{plan.seconds:g} s measured"
            )
            _sleep_until(t0 + int(plan.warmup * 1e9))
            started = time.monotonic()
            server_a, load_a, server_wait_a, load_wait_a, stats_a = snapshot()
            _sleep_until(t0 + int((plan.warmup + plan.seconds) * 1e9))
            seconds = time.monotonic() - started
            server_b, load_b, server_wait_b, load_wait_b, stats_b = snapshot()
            say("  draining")
            measured: list[dict[str, Any]] = []
            for _, out in loads:
                try:
                    measured.append(_parse_load(out.next_line(DRAIN_TIMEOUT + RESULT_GRACE)))
                except BenchError as exc:
                    raise BenchError(f"no result from {out.what}: {exc}") from None
            stats_final = snapshot()[4]
            samples = {
                suffix: _read_samples(prefix, plan.processes, suffix)
                for suffix in ("e2e", "ack", "lag")
            }
        finally:
            for child in reversed(children):
                if child.stdin is not None:
                    child.stdin.close()
                stop(child)
    window = Window(
        seconds=seconds,
        server_cpu_s=server_b - server_a,
        load_cpu_s=load_b - load_a,
        server_wait_s=_difference(server_wait_a, server_wait_b),
        load_wait_s=_difference(load_wait_a, load_wait_b),
        stats_start=stats_a,
        stats_end=stats_b,
        stats_final=stats_final,
    )
    return measured, samples, window


def _parse_load(line: str) -> dict[str, Any]:
    import json

    try:
        measured = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BenchError(f"a load process printed no JSON result: {exc}") from None
    if not isinstance(measured, dict):
        raise BenchError("a load process printed no JSON object")
    return measured
