"""``agentcast orchestrate`` and ``agentcast workflow list|show|replay``."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click
import orjson

from agentcast.orchestration.workflow import Workflow, import_workflows

DEFAULT_DSN = "sqlite:///agentcast-workflows.db"
DEFAULT_URL = "ws://127.0.0.1:8765/v1/ws"


def load_workflows(spec: str) -> list[Workflow]:
    """The workflows ``module:attribute`` names, or a ``click.UsageError`` saying why not."""
    try:
        return import_workflows(spec)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _dsn_option(func: Any) -> Any:
    return click.option(
        "--db",
        "dsn",
        default=DEFAULT_DSN,
        show_default=True,
        envvar="AGENTCAST_WORKFLOWS_DB",
        help="Workflow state and outbox: sqlite:///path.db or postgresql://...[?schema=NAME].",
    )(func)


@click.command()
@click.argument("spec", metavar="MODULE:WORKFLOWS")
@_dsn_option
@click.option("--node", "url", default=DEFAULT_URL, show_default=True, help="Node WebSocket URL.")
@click.option("--token", default=None, envvar="AGENTCAST_TOKEN", help="Credential for the node.")
@click.option("--group", default="orchestrator", show_default=True, help="Consumer group name.")
@click.option("--batch", type=int, default=256, show_default=True, help="Events per transaction.")
@click.option(
    "--ack-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds before the node gives an unacked event to another orchestrator.",
)
@click.option(
    "--key-header",
    default="key",
    show_default=True,
    help="Header whose equal values are never in flight together (per-instance order).",
)
@click.option("--no-relay", is_flag=True, help="Do not publish intents here (run `outbox relay`).")
@click.option(
    "--progress",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds between progress lines on stderr (0: none).",
)
@click.option(
    "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port."
)
@click.option("--log-level", default="info", show_default=True)
def orchestrate(
    spec: str,
    dsn: str,
    url: str,
    token: str | None,
    group: str,
    batch: int,
    ack_timeout: float,
    key_header: str,
    no_relay: bool,
    progress: float,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Run the workflows MODULE:WORKFLOWS (a Workflow or a list) against a node until
    SIGINT/SIGTERM."""
    from agentcast.orchestration.orchestrator import Orchestrator
    from agentcast.runtime import run, setup_logging, stop_on_signals

    workflows = load_workflows(spec)
    setup_logging(log_level)
    try:
        orchestrator = Orchestrator(
            workflows,
            dsn=dsn,
            url=url,
            token=token,
            group=group,
            batch=batch,
            ack_timeout=ack_timeout,
            key_header=key_header,
            relay=not no_relay,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=orchestrator.metrics.registry)

    async def report(stop: asyncio.Event) -> None:
        await orchestrator.ready.wait()
        click.echo(
            f"orchestrating {', '.join(w.name for w in workflows)} from {url} into {dsn}",
            err=True,
        )
        while progress > 0 and not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), progress)
            except TimeoutError:
                click.echo(
                    f"progress {orjson.dumps(orchestrator.stats.to_json()).decode()}", err=True
                )

    async def orchestrate_until_signal() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        reporter = asyncio.create_task(report(stop))
        try:
            await orchestrator.run(stop)
        finally:
            reporter.cancel()

    run(orchestrate_until_signal())


@click.group()
def workflow() -> None:
    """Inspect workflow instances and replay them."""


@workflow.command("list")
@_dsn_option
@click.option("--workflow", "name", default=None, help="Only this workflow.")
@click.option("--limit", type=int, default=50, show_default=True)
def workflow_list(dsn: str, name: str | None, limit: int) -> None:
    """Instances, most recently changed first: workflow, key, status, steps."""
    from agentcast.orchestration.store import WorkflowStore

    async def listing() -> None:
        store = WorkflowStore(_db(dsn), _no_engine())
        await store.open()
        try:
            for instance in await store.instances(name, limit):
                click.echo(
                    f"{instance.workflow}\t{instance.key}\t{instance.status}\t{instance.step}"
                )
        finally:
            await store.close()

    asyncio.run(listing())


@workflow.command("show")
@_dsn_option
@click.argument("name")
@click.argument("key")
def workflow_show(dsn: str, name: str, key: str) -> None:
    """One instance's log as JSON lines: step, input, effects, state."""
    from agentcast.orchestration.store import WorkflowStore

    async def show() -> None:
        store = WorkflowStore(_db(dsn), _no_engine())
        await store.open()
        try:
            entries = await store.log(name, key)
        finally:
            await store.close()
        if not entries:
            raise click.ClickException(f"no instance {key!r} of workflow {name!r} in {dsn}")
        for entry in entries:
            line = {
                "step": entry.step,
                "input": orjson.loads(entry.input),
                "effects": orjson.loads(entry.effects),
                "state": orjson.loads(entry.state),
            }
            click.echo(orjson.dumps(line).decode())

    asyncio.run(show())


@workflow.command("replay")
@click.argument("spec", metavar="MODULE:WORKFLOWS")
@click.argument("name")
@click.argument("key")
@_dsn_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def workflow_replay(spec: str, name: str, key: str, dsn: str, as_json: bool) -> None:
    """Replay instance KEY of workflow NAME with the code in MODULE:WORKFLOWS and compare
    every step with its log, byte for byte. Exits 1 when a step differs."""
    from agentcast.orchestration.replay import replay
    from agentcast.orchestration.store import WorkflowStore

    workflows = {w.name: w for w in load_workflows(spec)}
    if name not in workflows:
        raise click.UsageError(f"{spec} has no workflow {name!r} (has {sorted(workflows)})")

    async def entries() -> list[Any]:
        store = WorkflowStore(_db(dsn), _no_engine())
        await store.open()
        try:
            return list(await store.log(name, key))
        finally:
            await store.close()

    logged = asyncio.run(entries())
    if not logged:
        raise click.ClickException(f"no instance {key!r} of workflow {name!r} in {dsn}")
    report = replay(workflows[name], key, logged)
    if as_json:
        click.echo(orjson.dumps(report.to_json()).decode())
    else:
        verdict = "identical" if report.identical else f"{len(report.differences)} difference(s)"
        click.echo(f"{name}/{key}: {report.steps} step(s) replayed, {verdict}")
        for diff in report.differences:
            click.echo(f"  step {diff.step} {diff.part}:")
            click.echo(f"    recorded {diff.recorded.decode()}")
            click.echo(f"    replayed {diff.replayed.decode()}")
    sys.exit(0 if report.identical else 1)


def _db(dsn: str) -> Any:
    """The database of an existing store (a SQLite file that is not there is an error,
    not a new empty store)."""
    from agentcast.orchestration.db import open_db
    from agentcast.outbox.dsn import parse_dsn

    try:
        parsed = parse_dsn(dsn)
        db = open_db(dsn)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if parsed.kind == "sqlite" and not os.path.exists(parsed.target):
        raise click.ClickException(f"no workflow database at {parsed.target}")
    return db


def _no_engine() -> Any:
    from agentcast.orchestration.engine import Engine

    return Engine([])
