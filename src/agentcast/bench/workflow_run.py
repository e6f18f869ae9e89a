"""The run of ``agentcast bench workflow``: events into workflow transitions, per database.

For every database of ``--db`` the parent starts a fresh workflow database
(:func:`agentcast.bench.durable_stores.fresh_history`: a new SQLite file, or a throwaway
PostgreSQL schema, removed after) and three children (:mod:`agentcast.bench.children`):

* the **node** (:mod:`agentcast.bench.server_main`) with ``durable = ["bench.>"]`` in a
  ``memory`` history by default (``--node-history sqlite``: a fresh SQLite file), so the
  node's own storage cost stays out of the orchestration figures;
* the **orchestrator** (:mod:`agentcast.bench.workflow_main`): an ``Orchestrator`` of
  :mod:`agentcast.bench.workflow_flows` with its outbox relay, in batches of ``--batch``;
* the **load** (:mod:`agentcast.bench.workflow_load`): the throughput phase, then the
  latency phase, printing one JSON line of raw measurements.

Placement on two CPUs: the orchestrator, the component measured, has the second CPU to
itself; the node and the load share the first. After the load, the parent reads the
orchestrator's counters (SIGUSR1, one ``STATS`` line). The result
(:mod:`agentcast.bench.workflow_result`) is one JSON object on stdout (and appended to
``--output``). The children are always stopped and every database removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentcast.bench.children import (
    BenchError,
    LineReader,
    last_json_line,
    spawn,
    stop,
    wait_ready,
)
from agentcast.bench.durable_stores import fresh_history
from agentcast.bench.process import pick_cpus
from agentcast.bench.report import emit_result
from agentcast.bench.server_main import parse_stats
from agentcast.bench.workflow_load import WorkflowPlan
from agentcast.bench.workflow_result import (
    Placement,
    WorkflowParams,
    build_result,
    complete,
    db_row,
    summary,
)

HOST = "127.0.0.1"
DURABLE_PATTERN = "bench.>"
DBS = ("sqlite", "postgres")
READY_TIMEOUT = 30.0
LOAD_GRACE = 60.0
STATS_TIMEOUT = 10.0
MAX_EVENTS = 1_000_000
MAX_INSTANCES = 100_000
MAX_RATE = 100_000.0


def run_workflow_cli(
    *,
    dbs: str,
    events: int,
    instances: int,
    window: int,
    rate: float,
    seconds: float,
    batch: int,
    node_history: str,
    timeout: float,
    pg_dsn: str,
    as_json: bool,
    output: str | None,
) -> int:
    """Run the benchmark and print its JSON result; return the exit status.

    0: every event became exactly one transition whose intent arrived; 1: a result showing
    otherwise; 2: bad arguments or no result (a database, child or phase failed); 130:
    interrupted.
    """
    params = WorkflowParams(
        dbs=tuple(item.strip().lower() for item in dbs.split(",") if item.strip()),
        events=events,
        instances=instances,
        window=window,
        rate=rate,
        seconds=seconds,
        batch=batch,
        node_history=node_history,
        timeout=timeout,
    )
    problem = check(params)
    if problem is not None:
        print(f"agentcast bench workflow: {problem}", file=sys.stderr)
        return 2
    first, second = pick_cpus()
    placement = Placement(node=first, orchestrator=second, load=first)
    loadavg_before = round(os.getloadavg()[0], 2)
    try:
        rows = run_workflow(params, placement, pg_dsn, quiet=as_json)
    except BenchError as exc:
        print(f"agentcast bench workflow: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentcast bench workflow: interrupted", file=sys.stderr)
        return 130
    loadavg = (loadavg_before, round(os.getloadavg()[0], 2))
    result = build_result(params, rows, placement, loadavg, source_revision())
    emit_result(result, output=output, summary=None if as_json else summary(result))
    return 0 if complete(result) else 1


SOURCE_PATHS = ("src/agentcast/orchestration", "src/agentcast/outbox", "src/agentcast/client")
GIT_TIMEOUT = 5.0


def source_revision() -> dict[str, Any] | None:
    """The git commit of the source tree this runs from and its uncommitted changes under
    :data:`SOURCE_PATHS` (the code measured), read with ``git rev-parse`` and ``git
    status`` (read-only); ``None`` outside a git checkout."""
    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=True,
        )
        return done.stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        status = git("status", "--porcelain", "--", *SOURCE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return None
    modified = sorted(line[3:] for line in status.splitlines() if len(line) > 3)
    return {"commit": commit, "modified": modified}


def check(params: WorkflowParams) -> str | None:
    """Why ``params`` cannot run, or ``None``."""
    unknown = [db for db in params.dbs if db not in DBS]
    if not params.dbs or unknown:
        return f"--db takes {', '.join(DBS)} (comma-separated), not {','.join(params.dbs)!r}"
    if not 1 <= params.events <= MAX_EVENTS:
        return f"--events must be between 1 and {MAX_EVENTS}"
    if not 1 <= params.instances <= MAX_INSTANCES:
        return f"--instances must be between 1 and {MAX_INSTANCES}"
    if params.window < 1 or params.batch < 1:
        return "--window and --batch must be at least 1"
    if not 0 < params.rate <= MAX_RATE or params.seconds < 0:
        return f"--rate must be in (0, {MAX_RATE:g}] and --seconds not negative"
    if params.rate * params.seconds > MAX_EVENTS:
        return f"--rate x --seconds must be at most {MAX_EVENTS} events"
    if params.timeout <= 0:
        return "--timeout must be positive"
    return None


def run_workflow(
    params: WorkflowParams, placement: Placement, pg_dsn: str, *, quiet: bool
) -> list[dict[str, Any]]:
    """One row per database, each on a fresh node, database and orchestrator."""

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    plan = WorkflowPlan(
        url="",
        node_pid=0,
        orchestrator_pid=0,
        events=params.events,
        instances=params.instances,
        window=params.window,
        rate=params.rate,
        seconds=params.seconds,
        timeout=params.timeout,
        quiet=quiet,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agentcast-bench-") as workdir:
        for db in params.dbs:
            say(f"workflow {db}: {params.events} events, then {plan.latency_events} at rate")
            with (
                fresh_history(db, Path(workdir), pg_dsn) as dsn,
                _node_history(params.node_history, Path(workdir), pg_dsn) as history,
            ):
                measured, stats = run_on_db(dsn, history, params, plan, placement, say)
            expected = params.events + plan.latency_events
            rows.append(db_row(db, measured, stats, expected))
    return rows


@contextmanager
def _node_history(kind: str, workdir: Path, pg_dsn: str) -> Iterator[str]:
    if kind == "memory":
        yield "memory"
        return
    with fresh_history(kind, workdir, pg_dsn) as url:
        yield url


def run_on_db(
    dsn: str,
    history: str,
    params: WorkflowParams,
    plan: WorkflowPlan,
    placement: Placement,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict[str, int]]]:
    """Start the node, the orchestrator on ``dsn`` and the load; return the load's raw
    measurements and the orchestrator's counters (see :func:`_read_stats`)."""
    children: list[subprocess.Popen[bytes]] = []
    try:
        max_events = f"--max-events={params.events + plan.latency_events + 1000}"
        node_args = ["--server", "agentcast", "--history", history]
        node = spawn(
            "agentcast.bench.server_main",
            [*node_args, "--durable", DURABLE_PATTERN, max_events],
            placement.node,
        )
        children.append(node)
        port = wait_ready(LineReader(node), READY_TIMEOUT)
        url = f"ws://{HOST}:{port}/v1/ws"
        say(f"  node pid {node.pid} on {HOST}:{port} (history {history})")
        orchestrator = spawn(
            "agentcast.bench.workflow_main",
            ["--node", url, "--db", dsn, f"--batch={params.batch}"],
            placement.orchestrator,
        )
        children.append(orchestrator)
        reader = LineReader(orchestrator, "the orchestrator")
        wait_ready(reader, READY_TIMEOUT)
        say(f"  orchestrator pid {orchestrator.pid} on {dsn}")
        plan = replace(plan, url=url, node_pid=node.pid, orchestrator_pid=orchestrator.pid)
        load = spawn("agentcast.bench.workflow_load", plan.to_args(), placement.load)
        children.append(load)
        budget = 2 * params.timeout + params.seconds + LOAD_GRACE
        try:
            out, _ = load.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the load process did not finish within {budget:g} s") from None
        if load.returncode != 0:
            raise BenchError(f"the load process failed (exit status {load.returncode})")
        for child, what in ((node, "node"), (orchestrator, "orchestrator")):
            if child.poll() is not None:
                raise BenchError(f"the {what} exited during the run (status {child.returncode})")
        measured = last_json_line(out)
        marks = int(measured.get("stats_marks", 0))
        return measured, _read_stats(orchestrator, reader, marks)
    finally:
        for child in reversed(children):
            stop(child)


def _read_stats(
    child: subprocess.Popen[bytes], reader: LineReader, marks: int
) -> list[dict[str, int]]:
    """The orchestrator's ``STATS`` lines: the ``marks`` the load asked for during the run,
    then the final one (asked for now, with SIGUSR1); ``[]`` when they cannot be read."""
    child.send_signal(signal.SIGUSR1)
    try:
        return [parse_stats(reader.next_line(STATS_TIMEOUT)) for _ in range(marks + 1)]
    except (BenchError, ValueError):
        return []
