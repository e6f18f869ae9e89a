"""The workflow benchmark's orchestrator process: ``python -m agentcast.bench.workflow_main``.

Runs an :class:`~agentcast.orchestration.orchestrator.Orchestrator` of
:data:`agentcast.bench.workflow_flows.ALL` (with its outbox relay, as ``agentcast
orchestrate`` does) against ``--node`` with its state in ``--db``, pinned to ``--cpu``
when given. It prints ``READY 0`` on stdout once it has joined its consumer group, answers
SIGUSR1 with one ``STATS {json}`` line of the orchestrator's counters
(:meth:`~agentcast.orchestration.orchestrator.OrchestratorStats.to_json`), and runs until
SIGTERM, SIGINT or the exit of its parent. Exit status 2 when it could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import traceback

import orjson

from agentcast.bench.process import announce_ready, exit_with_parent, pin_to_cpu
from agentcast.bench.server_main import STATS_PREFIX
from agentcast.bench.workflow_flows import ALL
from agentcast.orchestration.orchestrator import Orchestrator
from agentcast.runtime import run, setup_logging, stop_on_signals


def _print_stats(orchestrator: Orchestrator) -> None:
    line = STATS_PREFIX + orjson.dumps(orchestrator.stats.to_json()).decode() + "\n"
    sys.stdout.write(line)
    sys.stdout.flush()


async def orchestrate(url: str, dsn: str, batch: int) -> None:
    """Run the benchmark's workflows until a signal or the parent's exit."""
    orchestrator = Orchestrator(ALL, dsn=dsn, url=url, batch=batch)
    stop = asyncio.Event()
    stop_on_signals(stop)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, _print_stats, orchestrator)

    async def announce() -> None:
        await orchestrator.ready.wait()
        announce_ready(0)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(exit_with_parent(stop))
            announcer = group.create_task(announce())
            try:
                await orchestrator.run(stop)
            finally:
                stop.set()
                announcer.cancel()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcast.bench.workflow_main")
    parser.add_argument("--node", required=True, help="node WebSocket URL")
    parser.add_argument("--db", required=True, help="workflow database DSN")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    pin_to_cpu(args.cpu)
    setup_logging("warning")
    failure: BaseException | None = None
    try:
        run(orchestrate(args.node, args.db, max(1, args.batch)))
    except* Exception as group:
        failure = group.exceptions[0]
    if failure is not None:
        print("orchestrator: could not run", file=sys.stderr)
        traceback.print_exception(failure, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
