"""``agentcast bench durable``: acked durable publishes and resume, per history store.

For every store and every publisher count, and once more per store for the resume, the
parent starts a fresh store (:mod:`agentcast.bench.durable_stores`) and two children, as
``agentcast bench fanout`` does (:mod:`agentcast.bench.children`):

* the **server** (:mod:`agentcast.bench.server_main`), a real node with that history store
  and ``durable = ["bench.>"]``, pinned to the first allowed CPU, prints ``READY <port>``
  once it listens; after the load it answers SIGUSR1 with its group-commit counters;
* the **load** (:mod:`agentcast.bench.durable_load`), pinned to the second CPU, runs one
  phase (``publish`` or ``resume``) and prints its raw measurements as one JSON line.

The parent combines them (:mod:`agentcast.bench.durable_result`), prints one JSON object on
stdout (plus a summary on stderr unless ``as_json``) and appends it as one line to
``output`` when given. Both children are always stopped and every store removed, whatever
happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentcast.bench.children import (
    BenchError,
    LineReader,
    cpu_note,
    last_json_line,
    spawn,
    stop,
    wait_ready,
)
from agentcast.bench.durable_load import DurablePlan
from agentcast.bench.durable_result import (
    DurableParams,
    build_result,
    complete,
    publish_row,
    resume_row,
    summary,
)
from agentcast.bench.durable_stores import STORES, fresh_history
from agentcast.bench.process import pick_cpus
from agentcast.bench.report import emit_result
from agentcast.bench.server_main import DEFAULT_MAX_EVENTS, parse_stats

HOST = "127.0.0.1"
DURABLE_PATTERN = "bench.>"
SERVER_READY_TIMEOUT = 30.0
CONNECT_BASE_TIMEOUT = 30.0
CONNECT_TIMEOUT_PER_PUBLISHER = 0.05
LOAD_EXIT_GRACE = 30.0
STATS_TIMEOUT = 10.0
MAX_PUBLISHERS = 10_000


def parse_list(text: str, kind: Callable[[str], Any]) -> tuple[Any, ...]:
    """``"a,b,c"`` as a tuple of ``kind(item)``, empty items ignored."""
    return tuple(kind(item.strip()) for item in text.split(",") if item.strip())


def run_durable_cli(
    *,
    stores: str,
    publishers: str,
    messages: int,
    size: int,
    window: int,
    resume_events: int,
    timeout: float,
    pg_dsn: str,
    as_json: bool,
    output: str | None,
) -> int:
    """Run the durable benchmark and print its JSON result; return the exit status.

    0: every publish acked and every resume exact; 1: a result showing refusals, missing
    acks or an inexact resume; 2: bad arguments or no result (a store, server or load
    failed, a phase timed out); 130: interrupted.
    """
    try:
        params = DurableParams(
            stores=parse_list(stores, str.lower),
            publishers=parse_list(publishers, int),
            messages=messages,
            size=size,
            window=window,
            resume_events=resume_events,
            timeout=timeout,
        )
    except ValueError as exc:
        print(f"agentcast bench durable: --publishers: {exc}", file=sys.stderr)
        return 2
    problem = check(params)
    if problem is not None:
        print(f"agentcast bench durable: {problem}", file=sys.stderr)
        return 2
    pinned = pick_cpus()
    loadavg_before = round(os.getloadavg()[0], 2)
    try:
        rows, resumes = run_durable(params, pinned, pg_dsn, quiet=as_json)
    except BenchError as exc:
        print(f"agentcast bench durable: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentcast bench durable: interrupted", file=sys.stderr)
        return 130
    result = build_result(params, rows, resumes, pinned, loadavg_before)
    emit_result(result, output=output, summary=None if as_json else summary(result))
    return 0 if complete(result) else 1


def check(params: DurableParams) -> str | None:
    """Why ``params`` cannot run, or ``None``."""
    if not params.stores:
        return "--store needs at least one store"
    unknown = [store for store in params.stores if store not in STORES]
    if unknown:
        return f"unknown store(s) {', '.join(unknown)}: use {', '.join(STORES)}"
    if not params.publishers or any(not 1 <= p <= MAX_PUBLISHERS for p in params.publishers):
        return f"--publishers needs counts between 1 and {MAX_PUBLISHERS}"
    if params.messages < 1:
        return "--messages must be at least 1"
    if params.size < 0:
        return "--size must not be negative"
    if params.window < 1:
        return "--window must be at least 1"
    if params.resume_events < 0:
        return "--resume-events must not be negative (0 skips the resume)"
    if params.timeout <= 0:
        return "--timeout must be positive"
    return None


def run_durable(
    params: DurableParams, pinned: tuple[int | None, int | None], pg_dsn: str, *, quiet: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every ``(store, publishers)`` row, then each store's resume, each on a fresh node and
    store; returns ``(rows, resumes)``."""

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    rows: list[dict[str, Any]] = []
    resumes: list[dict[str, Any]] = []
    base = DurablePlan(
        url="",
        server_pid=0,
        phase="publish",
        publishers=1,
        messages=params.messages,
        size=params.size,
        window=params.window,
        resume_events=params.resume_events,
        connect_timeout=CONNECT_BASE_TIMEOUT,
        phase_timeout=params.timeout,
        quiet=quiet,
    )
    max_events = max(DEFAULT_MAX_EVENTS, params.resume_events)
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-") as workdir:
        for store in params.stores:
            for count in params.publishers:
                say(f"durable {store}: {count} publishers x {params.messages} messages in all")
                plan = replace(
                    base,
                    publishers=count,
                    connect_timeout=CONNECT_BASE_TIMEOUT + CONNECT_TIMEOUT_PER_PUBLISHER * count,
                )
                with fresh_history(store, Path(workdir), pg_dsn) as url:
                    measured, stats = run_on_node(url, max_events, plan, pinned, say)
                rows.append(publish_row(store, count, params.messages, measured, stats))
            if params.resume_events:
                say(f"durable {store}: resume of {params.resume_events} events")
                plan = replace(base, phase="resume", publishers=1)
                with fresh_history(store, Path(workdir), pg_dsn) as url:
                    measured, _ = run_on_node(url, max_events, plan, pinned, say)
                resumes.append(resume_row(store, measured))
    return rows, resumes


def run_on_node(
    history: str,
    max_events: int,
    plan: DurablePlan,
    pinned: tuple[int | None, int | None],
    say: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, int] | None]:
    """Start a node on ``history``, run ``plan``'s load against it, read the node's
    group-commit counters, stop both; returns the load's measurements and the counters
    (``None`` if the node did not report them)."""
    server_cpu, load_cpu = pinned
    children: list[subprocess.Popen[bytes]] = []
    try:
        server_args = ["--server", "agentcast", "--history", history]
        server_args += ["--durable", DURABLE_PATTERN, f"--max-events={max_events}"]
        server = spawn("agentcast.bench.server_main", server_args, server_cpu)
        children.append(server)
        reader = LineReader(server)
        port = wait_ready(reader, SERVER_READY_TIMEOUT)
        say(f"  server pid {server.pid} on {HOST}:{port}" + cpu_note(server_cpu))
        plan = replace(plan, url=f"ws://{HOST}:{port}/v1/ws", server_pid=server.pid)
        load = spawn("agentcast.bench.durable_load", plan.to_args(), load_cpu)
        children.append(load)
        say("  load process started" + cpu_note(load_cpu))
        # connect, then the phase (the resume has two: publish R, then replay them)
        budget = plan.connect_timeout * 2 + plan.phase_timeout * 2 + LOAD_EXIT_GRACE
        try:
            out, _ = load.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the load process did not finish within {budget:g} s") from None
        if load.returncode != 0:
            raise BenchError(f"the load process failed (exit status {load.returncode})")
        if server.poll() is not None:
            raise BenchError(f"the server exited during the run (status {server.returncode})")
        measured = last_json_line(out)
        return measured, _read_stats(server, reader)
    finally:
        for child in reversed(children):
            stop(child)


def _read_stats(server: subprocess.Popen[bytes], reader: LineReader) -> dict[str, int] | None:
    """Ask the node for its counters (SIGUSR1) and read its ``STATS`` line."""
    server.send_signal(signal.SIGUSR1)
    try:
        return parse_stats(reader.next_line(STATS_TIMEOUT))
    except (BenchError, ValueError):
        return None
