"""The workflow benchmark's load process: ``python -m agentcast.bench.workflow_load ...``.

One SDK :class:`~agentcast.client.Client` connection subscribes to the intent topic
(:data:`~agentcast.bench.workflow_flows.INTENTS`) and feeds every intent to an
:class:`~agentcast.bench.workflow_tally.IntentTally`, then publishes the events of two
phases to :data:`~agentcast.bench.workflow_flows.EVENTS` (acked publishes, event ``i`` of a
phase with correlation id ``<phase>-<i mod instances>``):

* **throughput** (phase ``x``): ``events`` publishes, at most ``window`` unacked at a time,
  as fast as the acks allow; the phase ends when the intents of all ``events`` transitions
  have arrived. Its wall time runs from the first send to the arrival of the last new
  intent; the orchestrator's and the node's CPU times are read around it.
* **latency** (phase ``l``): ``round(rate * seconds)`` publishes at a fixed rate (open loop,
  each send at its planned time), each payload ``{"t": monotonic_ns}`` taken right before
  its send; the workflow copies ``t`` into the intent, so ``arrival - t`` is the
  event-published to intent-delivered latency of every transition.

Each phase waits at most ``timeout`` seconds for its intents (the result then shows what
arrived). The process prints one JSON object of raw measurements on stdout; progress goes
to stderr unless ``quiet``. Exit status 0 with a result, 2 when the load could not run
(message on stderr), 3 when the parent went away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from agentcast.bench.durable_load import shares
from agentcast.bench.load import LoadError, Progress, ServerProbe, report_until_orphaned
from agentcast.bench.process import pin_to_cpu
from agentcast.bench.workflow_flows import EVENTS, INTENTS
from agentcast.bench.workflow_result import latency_ms
from agentcast.bench.workflow_tally import IntentTally
from agentcast.client import Client
from agentcast.errors import ClientError, ConnectionClosed
from agentcast.runtime import run

THROUGHPUT, LATENCY = "x", "l"
CONNECT_TIMEOUT = 30.0


@dataclass(slots=True, frozen=True)
class WorkflowPlan:
    """What one load run does."""

    url: str
    node_pid: int
    orchestrator_pid: int
    events: int
    instances: int
    window: int
    rate: float
    seconds: float
    timeout: float
    quiet: bool = False

    @property
    def latency_events(self) -> int:
        """Events of the latency phase (0 skips it)."""
        return max(0, round(self.rate * self.seconds))

    def to_args(self) -> list[str]:
        """The command-line arguments that :func:`parse_plan` turns back into this plan."""
        args = [
            f"--url={self.url}",
            f"--node-pid={self.node_pid}",
            f"--orchestrator-pid={self.orchestrator_pid}",
            f"--events={self.events}",
            f"--instances={self.instances}",
            f"--window={self.window}",
            f"--rate={self.rate}",
            f"--seconds={self.seconds}",
            f"--timeout={self.timeout}",
        ]
        return [*args, "--quiet"] if self.quiet else args


def parse_plan(argv: list[str] | None) -> tuple[WorkflowPlan, int | None]:
    """Parse the load's command line into a plan and the CPU to pin to."""
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.workflow_load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--node-pid", type=int, required=True)
    parser.add_argument("--orchestrator-pid", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--instances", type=int, required=True)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    plan = WorkflowPlan(
        url=args.url,
        node_pid=args.node_pid,
        orchestrator_pid=args.orchestrator_pid,
        events=max(1, args.events),
        instances=max(1, args.instances),
        window=max(1, args.window),
        rate=max(0.0, args.rate),
        seconds=max(0.0, args.seconds),
        timeout=args.timeout,
        quiet=args.quiet,
    )
    return plan, args.cpu


@dataclass(slots=True)
class Publishes:
    """The acks of one phase's publishes."""

    sent: int = 0
    acked: int = 0
    errors: int = 0
    first_error: str | None = None
    last_ack_ns: int = 0
    ack_latencies_ns: list[int] = field(default_factory=list)

    async def publish(self, client: Client, key: str, payload: Any, sent_ns: int) -> None:
        """One acked publish of ``payload`` for instance ``key`` (refusals are counted)."""
        self.sent += 1
        try:
            await client.publish(EVENTS, payload, correlation_id=key)
        except (ClientError, TimeoutError, ConnectionClosed) as exc:
            self.errors += 1
            self.first_error = self.first_error or repr(exc)
            return
        self.acked += 1
        self.last_ack_ns = time.monotonic_ns()
        self.ack_latencies_ns.append(self.last_ack_ns - sent_ns)

    def figures(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acked": self.acked,
            "publish_errors": self.errors,
            "first_error": self.first_error,
        }


class Probes:
    """CPU seconds of the orchestrator, the node and this process."""

    def __init__(self, plan: WorkflowPlan) -> None:
        self.orchestrator = ServerProbe(plan.orchestrator_pid)
        self.node = ServerProbe(plan.node_pid)

    def read(self) -> tuple[float, float, float]:
        return self.orchestrator.cpu_seconds(), self.node.cpu_seconds(), time.process_time()

    @staticmethod
    def spent(
        before: tuple[float, float, float], after: tuple[float, float, float]
    ) -> dict[str, float]:
        names = ("orchestrator_cpu_s", "node_cpu_s", "load_cpu_s")
        return {name: round(b - a, 3) for name, a, b in zip(names, before, after, strict=True)}


async def run_throughput(
    client: Client,
    tally: IntentTally,
    done: defaultdict[str, asyncio.Event],
    plan: WorkflowPlan,
    progress: Progress,
) -> dict[str, Any]:
    """The throughput phase's raw figures: ``sent``, ``acked``, ``publish_errors``,
    ``first_error``, ``publish_s`` (first send to last ack), ``duration_s`` (first send to
    last new intent), ``transitions``, ``intents_received``, ``intent_duplicates``,
    ``out_of_order``, ``exact`` (intents ``1..count`` for every instance), CPU seconds."""
    keys = [f"{THROUGHPUT}-{j}" for j in range(plan.instances)]
    tally.expect(THROUGHPUT, plan.events)
    phase = tally.phase(THROUGHPUT)
    publishes = Publishes()
    window = asyncio.Semaphore(plan.window)

    async def one(i: int) -> None:
        try:
            await publishes.publish(client, keys[i % plan.instances], {"i": i}, time.monotonic_ns())
        finally:
            window.release()

    def status() -> str:
        return (
            f"throughput: {publishes.acked}/{plan.events} acked, "
            f"{phase.transitions} transitions seen"
        )

    probes = Probes(plan)
    before = probes.read()
    first_ns = time.monotonic_ns()
    with progress.showing(status), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(plan.timeout), asyncio.TaskGroup() as tasks:
            for i in range(plan.events):
                await window.acquire()
                tasks.create_task(one(i))
            await done[THROUGHPUT].wait()
    end_ns = phase.last_ns if phase.done else time.monotonic_ns()
    after = probes.read()
    counts = dict(zip(keys, shares(plan.events, plan.instances), strict=True))
    return {
        **publishes.figures(),
        "publish_s": round((publishes.last_ack_ns - first_ns) / 1e9, 6)
        if publishes.last_ack_ns
        else None,
        "duration_s": round((end_ns - first_ns) / 1e9, 6),
        **_intent_figures(tally, THROUGHPUT, counts),
        **Probes.spent(before, after),
    }


async def run_latency(
    client: Client,
    tally: IntentTally,
    done: defaultdict[str, asyncio.Event],
    plan: WorkflowPlan,
    progress: Progress,
) -> dict[str, Any]:
    """The latency phase's raw figures: publish counts, ``max_send_lag_ms`` (how late the
    latest send was against its plan), ``latency_ms`` (event published to intent
    delivered: p50/p99/p999/max), ``ack_latency_ms`` (publish to ack), the intent counts
    and CPU seconds."""
    count = plan.latency_events
    keys = [f"{LATENCY}-{j}" for j in range(plan.instances)]
    tally.expect(LATENCY, count)
    phase = tally.phase(LATENCY)
    publishes = Publishes()
    loop = asyncio.get_running_loop()
    max_lag = 0.0

    def status() -> str:
        return f"latency: {publishes.acked}/{count} acked, {phase.transitions} transitions seen"

    probes = Probes(plan)
    before = probes.read()
    with progress.showing(status), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(plan.seconds + plan.timeout), asyncio.TaskGroup() as tasks:
            start = loop.time()
            for i in range(count):
                planned = start + i / plan.rate
                if planned > loop.time():
                    await asyncio.sleep(planned - loop.time())
                max_lag = max(max_lag, loop.time() - planned)
                sent_ns = time.monotonic_ns()
                key = keys[i % plan.instances]
                tasks.create_task(publishes.publish(client, key, {"t": sent_ns}, sent_ns))
            await done[LATENCY].wait()
    after = probes.read()
    counts = dict(zip(keys, shares(count, plan.instances), strict=True))
    return {
        **publishes.figures(),
        "max_send_lag_ms": round(max_lag * 1e3, 3),
        "latency_ms": latency_ms(phase.latencies_ns),
        "ack_latency_ms": latency_ms(publishes.ack_latencies_ns),
        **_intent_figures(tally, LATENCY, counts),
        **Probes.spent(before, after),
    }


def _mark_stats(pid: int) -> int:
    """Ask the orchestrator to print its counters now (SIGUSR1); 1 if the signal went."""
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return 0
    return 1


def _intent_figures(tally: IntentTally, name: str, counts: dict[str, int]) -> dict[str, Any]:
    phase = tally.phase(name)
    return {
        "transitions": phase.transitions,
        "intents_received": phase.received,
        "intent_duplicates": phase.duplicates,
        "out_of_order": phase.out_of_order,
        "exact": tally.complete_per_instance(name, {k: c for k, c in counts.items() if c}),
    }


async def run_load(plan: WorkflowPlan) -> dict[str, Any]:
    """Both phases' raw measurements (``throughput``, ``latency``; the latter ``None`` when
    ``rate * seconds`` rounds to 0), plus ``malformed`` intents, client ``reconnects``,
    intents the client buffer ``dropped``, and ``stats_marks``: 1 when the orchestrator was
    asked (SIGUSR1) to print its counters right after the throughput phase, else 0."""
    progress = Progress(plan.quiet)
    done: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
    tally = IntentTally(lambda name: done[name].set())
    buffer = plan.events + plan.latency_events + 1024
    stop_ticking = asyncio.Event()
    ticker = asyncio.create_task(progress.tick(stop_ticking))
    client = Client(plan.url, name="bench-workflow-load", connect_timeout=CONNECT_TIMEOUT)
    try:
        try:
            await client.connect()
            intents = await client.subscribe(INTENTS, buffer_size=buffer)
        except (OSError, ClientError, TimeoutError, ConnectionClosed) as exc:
            raise LoadError(f"cannot connect and subscribe to {plan.url}: {exc!r}") from None

        async def receive() -> None:
            async for event in intents:
                tally.add(event.payload, time.monotonic_ns())

        receiver = asyncio.create_task(receive())
        marks = 0
        try:
            throughput = await run_throughput(client, tally, done, plan, progress)
            marks += _mark_stats(plan.orchestrator_pid)
            latency = None
            if plan.latency_events:
                latency = await run_latency(client, tally, done, plan, progress)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientError, ConnectionClosed):
                await receiver
        return {
            "throughput": throughput,
            "latency": latency,
            "stats_marks": marks,
            "malformed": tally.malformed,
            "reconnects": client.reconnects,
            "dropped": intents.dropped,
        }
    finally:
        await client.close()
        stop_ticking.set()
        await ticker


def main(argv: list[str] | None = None) -> int:
    plan, cpu = parse_plan(argv)
    pin_to_cpu(cpu)
    return run(report_until_orphaned(run_load(plan)))


if __name__ == "__main__":
    raise SystemExit(main())
