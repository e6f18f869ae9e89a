"""``agentcast bench fanout``: one publisher, many subscribers, one server, over loopback.

The parent process only orchestrates; the work happens in two children started with
``sys.executable -m``, each in its own session (a Ctrl-C reaches only the parent, which then
stops both):

* the **server** (agentcast's :mod:`agentcast.bench.server_main`, or a peer started by
  :mod:`agentcast.bench.peers.launch`), pinned to the first allowed CPU when there are at
  least two, announces readiness on stdout once it listens (no sleeping);
* the **load** (:mod:`agentcast.bench.load`), pinned to the second CPU, runs the phases
  through the server's wire adapter and prints its raw measurements as one JSON line.

With several servers or subscriber counts, :mod:`agentcast.bench.peers.compare` runs this
once per combination, one after the other, with the same load plan.

The parent turns them into the result of :func:`agentcast.bench.fanout_result.build_result`,
prints it as one JSON object on stdout (plus a summary on stderr unless ``as_json``), and
appends it as one line to ``output`` when given. Both children are always stopped (SIGTERM,
then SIGKILL after a grace period) whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from agentcast.bench.children import BenchError, cpu_note, last_json_line, spawn, stop
from agentcast.bench.fanout_result import FanoutParams, build_result, mode_of, summary
from agentcast.bench.load import PUBLISH_GRACE, LoadPlan
from agentcast.bench.peers.launch import SERVERS, launch
from agentcast.bench.process import pick_cpus
from agentcast.bench.report import emit_result

HOST = "127.0.0.1"
SERVER_READY_TIMEOUT = 30.0
DRAIN_TIMEOUT = 10.0
CONNECT_BASE_TIMEOUT = 30.0
CONNECT_TIMEOUT_PER_SUBSCRIBER = 0.01
LOAD_EXIT_GRACE = 60.0

__all__ = ["BenchError", "run_fanout", "run_fanout_cli"]


def run_fanout_cli(
    *,
    subscribers: int | str,
    messages: int,
    size: int,
    rate: float,
    server: str,
    idle: bool,
    as_json: bool,
    output: str | None,
) -> int:
    """Run the fan-out benchmark and print its JSON result(s); return the exit status.

    ``server`` and ``subscribers`` may be comma lists: with more than one server or count,
    every combination is measured in this one run (see
    :func:`agentcast.bench.peers.compare.run_comparison`), one JSON line each.

    0: results with nothing lost and nothing out of order; 1: a result showing loss or
    disorder; 2: bad arguments or no result (server or load failed, a phase timed out);
    130: interrupted.
    """
    servers = [name.strip() for name in server.split(",") if name.strip()]
    counts = _counts(subscribers)
    problem = _check(min(counts, default=0), messages, size, rate, servers)
    if problem is not None:
        print(f"agentcast bench fanout: {problem}", file=sys.stderr)
        return 2
    if len(servers) > 1 or len(counts) > 1:
        from agentcast.bench.peers.compare import run_comparison

        base = FanoutParams(
            server=servers[0],
            subscribers=counts[0],
            messages=0 if idle else messages,
            size=size,
            rate=0.0 if idle else rate,
            idle=idle,
        )
        try:
            return run_comparison(servers, counts, base, quiet=as_json, output=output)
        except KeyboardInterrupt:
            print("agentcast bench fanout: interrupted", file=sys.stderr)
            return 130
    subscribers = counts[0]
    server = servers[0]
    params = FanoutParams(
        server=server,
        subscribers=subscribers,
        messages=0 if idle else messages,
        size=size,
        rate=0.0 if idle else rate,
        idle=idle,
    )
    pinned = pick_cpus()
    try:
        measured = run_fanout(params, pinned, quiet=as_json)
    except BenchError as exc:
        print(f"agentcast bench fanout: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentcast bench fanout: interrupted", file=sys.stderr)
        return 130
    result = build_result(params, measured, pinned)
    emit_result(result, output=output, summary=None if as_json else summary(result))
    return 0 if result["lost"] == 0 and result["out_of_order"] == 0 else 1


def _counts(subscribers: int | str) -> list[int]:
    if isinstance(subscribers, int):
        return [subscribers]
    try:
        return [int(part) for part in subscribers.split(",") if part.strip()]
    except ValueError:
        return []


def _check(
    subscribers: int, messages: int, size: int, rate: float, servers: list[str]
) -> str | None:
    if not servers or any(server not in SERVERS for server in servers):
        return f"--server must be a comma list of {', '.join(SERVERS)}"
    if len(set(servers)) != len(servers):
        return "--server lists a server twice"
    if subscribers < 1:
        return "--subscribers must be at least 1"
    if messages < 1:
        return "--messages must be at least 1"
    if size < 0:
        return "--size must not be negative"
    if rate < 0:
        return "--rate must not be negative (0 means burst)"
    return None


def run_fanout(
    params: FanoutParams,
    pinned: tuple[int | None, int | None],
    *,
    quiet: bool,
    drain_timeout: float = DRAIN_TIMEOUT,
) -> dict[str, Any]:
    """Start the server (:func:`~agentcast.bench.peers.launch.launch`) and the load, wait for
    the load's measurements, stop both."""
    server_cpu, load_cpu = pinned

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    loadavg_before = round(os.getloadavg()[0], 2)
    children: list[subprocess.Popen[bytes]] = []
    try:
        say(f"fanout {mode_of(params)}: starting the {params.server} server")
        launched = launch(params.server, server_cpu, children, SERVER_READY_TIMEOUT, say)
        say(f"  server pid {launched.pids[0]} at {launched.url}" + cpu_note(server_cpu))
        connect_timeout = CONNECT_BASE_TIMEOUT + CONNECT_TIMEOUT_PER_SUBSCRIBER * (
            params.subscribers
        )
        plan = LoadPlan(
            url=launched.url,
            server_pid=launched.pids[0],
            subscribers=params.subscribers,
            messages=params.messages,
            size=params.size,
            rate=params.rate,
            connect_timeout=connect_timeout,
            drain_timeout=drain_timeout,
            quiet=quiet,
            wire=launched.wire,
            extra_pids=launched.pids[1:],
        )
        say("  load process started" + cpu_note(load_cpu))
        load = spawn("agentcast.bench.load", plan.to_args(), load_cpu)
        children.append(load)
        publish_budget = (params.messages / params.rate if params.rate > 0 else 0.0) + (
            PUBLISH_GRACE
        )
        budget = connect_timeout * 2 + publish_budget + drain_timeout + LOAD_EXIT_GRACE
        try:
            out, _ = load.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the load process did not finish within {budget:g} s") from None
        if load.returncode != 0:
            raise BenchError(f"the load process failed (exit status {load.returncode})")
        for child in children[:-1]:
            if child.poll() is not None:
                raise BenchError(f"the server exited during the run (status {child.returncode})")
        measured = last_json_line(out)
        measured["loadavg_1m_before"] = loadavg_before
        return measured
    finally:
        for child in reversed(children):
            stop(child)
