"""``agentcast bench cluster``: one publisher, many subscribers spread over several nodes
linked by a broker, against the same workload on one node, over loopback.

One run measures two things, one after the other:

* **single**: the fan-out benchmark (:func:`agentcast.bench.fanout.run_fanout`) with the
  same subscribers, messages, size and rate on one node without a broker;
* **cluster**: ``nodes`` node processes (:mod:`agentcast.bench.server_main` with
  ``--broker``) joined through Redis or NATS on 127.0.0.1 under a prefix of their own (so
  concurrent runs never see each other's traffic), and one load process
  (:mod:`agentcast.bench.cluster_load`) that spreads the subscribers evenly over the nodes
  and publishes on the first node.

Every node is pinned to the first allowed CPU and the load to the second (the same
placement as the fan-out benchmark's server and load, so both halves give the servers the
same CPU; when the machine has a single CPU nothing is pinned). Each child runs in its own
session and announces readiness on stdout (never a sleep); all are always stopped
(SIGTERM, then SIGKILL after a grace period) whatever happens.

The result (:func:`agentcast.bench.cluster_result.build_result`) is printed as one JSON
object on stdout (plus a summary on stderr unless ``as_json``) and appended as one line to
``output`` when given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import psutil

from agentcast.bench import fanout_result
from agentcast.bench.children import (
    BenchError,
    LineReader,
    cpu_note,
    last_json_line,
    spawn,
    stop,
    wait_ready,
)
from agentcast.bench.cluster_load import ClusterLoadPlan, spread
from agentcast.bench.cluster_result import (
    BROKERS,
    ClusterParams,
    build_result,
    lost_nothing,
    summary,
)
from agentcast.bench.fanout import (
    CONNECT_BASE_TIMEOUT,
    CONNECT_TIMEOUT_PER_SUBSCRIBER,
    DRAIN_TIMEOUT,
    HOST,
    LOAD_EXIT_GRACE,
    SERVER_READY_TIMEOUT,
    run_fanout,
)
from agentcast.bench.load import PUBLISH_GRACE
from agentcast.bench.process import pick_cpus
from agentcast.bench.report import emit_result

BROKER_URLS = {
    "redis": "redis://127.0.0.1:6379/0?prefix={prefix}",
    "nats": "nats://127.0.0.1:4222?prefix={prefix}",
}
BROKER_PROCESSES = {"redis": ("redis-server", "6379"), "nats": ("nats-server", "4222")}
WARMUP_TIMEOUT = 30.0
MAX_NODES = 16

__all__ = ["BenchError", "broker_url", "find_broker_pid", "run_cluster", "run_cluster_cli"]


def broker_url(broker: str, prefix: str) -> str:
    """The URL of ``broker`` (``redis`` or ``nats``) on 127.0.0.1 under ``prefix``."""
    return BROKER_URLS[broker].format(prefix=prefix)


def find_broker_pid(broker: str) -> int | None:
    """The process of the local ``broker`` server, to measure its CPU time: the only process
    named ``redis-server`` (``nats-server``), or the only one of them whose command line
    names the default port; ``None`` when there is no such single process."""
    name, port = BROKER_PROCESSES[broker]
    found: list[tuple[int, str]] = []
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == name:
            found.append((process.pid, " ".join(process.info["cmdline"] or ())))
    if len(found) > 1:
        found = [(pid, cmdline) for pid, cmdline in found if port in cmdline]
    return found[0][0] if len(found) == 1 else None


def run_cluster_cli(
    *,
    broker: str,
    nodes: int,
    subscribers: int,
    messages: int,
    size: int,
    rate: float,
    as_json: bool,
    output: str | None,
) -> int:
    """Run the cluster benchmark once and print its JSON result; return the exit status.

    0: a result with nothing lost and nothing out of order in either half; 1: a result
    showing loss or disorder; 2: bad arguments or no result (a node, the broker or the load
    failed, a phase timed out); 130: interrupted.
    """
    problem = _check(broker, nodes, subscribers, messages, size, rate)
    if problem is not None:
        print(f"agentcast bench cluster: {problem}", file=sys.stderr)
        return 2
    params = ClusterParams(broker, nodes, subscribers, messages, size, rate)
    pinned = pick_cpus()
    loadavg_before = round(os.getloadavg()[0], 2)
    try:
        single_measured = run_fanout(params.single(), pinned, quiet=as_json)
        single = fanout_result.build_result(params.single(), single_measured, pinned)
        cluster_measured = run_cluster(params, pinned, quiet=as_json)
    except BenchError as exc:
        print(f"agentcast bench cluster: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("agentcast bench cluster: interrupted", file=sys.stderr)
        return 130
    result = build_result(params, cluster_measured, single, pinned, loadavg_before)
    emit_result(result, output=output, summary=None if as_json else summary(result))
    return 0 if lost_nothing(result) else 1


def _check(
    broker: str, nodes: int, subscribers: int, messages: int, size: int, rate: float
) -> str | None:
    if broker not in BROKERS:
        return f"--broker must be one of {', '.join(BROKERS)}"
    if not 2 <= nodes <= MAX_NODES:
        return f"--nodes must be between 2 and {MAX_NODES}"
    if subscribers < nodes:
        return "--subscribers must be at least --nodes (one subscriber per node)"
    if messages < 1:
        return "--messages must be at least 1"
    if size < 0:
        return "--size must not be negative"
    if rate < 0:
        return "--rate must not be negative (0 means burst)"
    return None


def run_cluster(
    params: ClusterParams, pinned: tuple[int | None, int | None], *, quiet: bool
) -> dict[str, Any]:
    """Start the nodes and the cluster load, wait for the load's measurements, stop all."""
    node_cpu, load_cpu = pinned

    def say(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    url = broker_url(params.broker, f"acbench{uuid.uuid4().hex[:12]}")
    children: list[subprocess.Popen[bytes]] = []
    try:
        say(f"cluster {params.mode}: starting {params.nodes} nodes on {url}")
        nodes = []
        for _ in range(params.nodes):
            node = spawn(
                "agentcast.bench.server_main", ["--server=agentcast", f"--broker={url}"], node_cpu
            )
            children.append(node)
            nodes.append(node)
        ports = []
        for index, node in enumerate(nodes):
            ports.append(wait_ready(LineReader(node, f"node {index}"), SERVER_READY_TIMEOUT))
            say(f"  node {index}: pid {node.pid} on {HOST}:{ports[-1]}" + cpu_note(node_cpu))
        largest_share = max(spread(params.subscribers, params.nodes))
        connect_timeout = CONNECT_BASE_TIMEOUT + CONNECT_TIMEOUT_PER_SUBSCRIBER * largest_share
        plan = ClusterLoadPlan(
            urls=tuple(f"ws://{HOST}:{port}/v1/ws" for port in ports),
            server_pids=tuple(node.pid for node in nodes),
            subscribers=params.subscribers,
            messages=params.messages,
            size=params.size,
            rate=params.rate,
            connect_timeout=connect_timeout,
            drain_timeout=DRAIN_TIMEOUT,
            warmup_timeout=WARMUP_TIMEOUT,
            broker_pid=find_broker_pid(params.broker),
            quiet=quiet,
        )
        say("  load process started" + cpu_note(load_cpu))
        load = spawn("agentcast.bench.cluster_load", plan.to_args(), load_cpu)
        children.append(load)
        publish_budget = (params.messages / params.rate if params.rate > 0 else 0.0) + (
            PUBLISH_GRACE
        )
        budget = (
            WARMUP_TIMEOUT
            + connect_timeout * (params.nodes + 2)
            + publish_budget
            + DRAIN_TIMEOUT
            + LOAD_EXIT_GRACE
        )
        try:
            out, _ = load.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            raise BenchError(f"the load process did not finish within {budget:g} s") from None
        if load.returncode != 0:
            raise BenchError(f"the cluster load process failed (exit status {load.returncode})")
        for index, node in enumerate(nodes):
            if node.poll() is not None:
                raise BenchError(f"node {index} exited during the run (status {node.returncode})")
        return last_json_line(out)
    finally:
        for child in reversed(children):
            stop(child)
