"""The ``agentcast`` command line."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from agentcast import __version__
from agentcast.config import ConfigError, ServerConfig, load_config


def _server_options(func: Any) -> Any:
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            envvar="AGENTCAST_CONFIG",
            help="TOML config file.",
        ),
        click.option("--host", default=None, help="Address to bind (default 127.0.0.1)."),
        click.option("--port", type=int, default=None, help="WebSocket port (default 8765)."),
        click.option("--http-port", type=int, default=None, help="HTTP port (default 8766)."),
        click.option("--log-level", default=None, help="debug, info, warning or error."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load(config_path: str | None, **overrides: Any) -> ServerConfig:
    try:
        return load_config(config_path, overrides=overrides)
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None


def _result_options(func: Any) -> Any:
    """``--json`` and ``--output``, shared by every benchmark command."""
    func = click.option(
        "--output",
        type=click.Path(dir_okay=False),
        default=None,
        help="Append the JSON result as one line to this file.",
    )(func)
    return click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")(func)


@click.group()
@click.version_option(__version__, prog_name="agentcast")
def main() -> None:
    """agentcast: a realtime backbone for multi-agent AI systems."""


@main.command()
@_server_options
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    http_port: int | None,
    log_level: str | None,
) -> None:
    """Run a node on the embedded defaults (no external service needed)."""
    from agentcast.node import Node
    from agentcast.runtime import run, setup_logging, stop_on_signals

    config = _load(config_path, host=host, port=port, http_port=http_port, log_level=log_level)
    setup_logging(config.log_level)

    async def serve_until_signal() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        async with Node(config) as node:
            click.echo(f"agentcast {__version__} node {node.node_id}", err=True)
            click.echo(f"  websocket  {node.ws_url}", err=True)
            click.echo(
                f"  http       {node.http_url}  (/v1/publish /healthz /readyz /metrics)", err=True
            )
            assert node.hub is not None
            if not node.hub.security.enabled:
                click.secho(
                    "WARNING: authentication is OFF. Any client can publish and subscribe to "
                    "any topic of any tenant. Set [security] auth in the config file for "
                    "anything but local development (docs/security.md).",
                    fg="red",
                    bold=True,
                    err=True,
                )
            waits = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(node.drain_requested.wait()),
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            click.echo("draining: closing connections with code 4000 (reconnect)", err=True)

    run(serve_until_signal())


@main.command()
@_server_options
@click.option(
    "--sessions", type=int, default=3, show_default=True, help="Simulated multi-agent sessions."
)
@click.option("--agents", type=int, default=24, show_default=True, help="Agents per session.")
@click.option(
    "--rate", type=float, default=2.0, show_default=True, help="Messages per second per agent."
)
@click.option(
    "--duration",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds to publish once every client is connected (0: until Ctrl-C).",
)
@click.option(
    "--no-live",
    is_flag=True,
    help="Print a summary line per second instead of the live view (for logs and CI).",
)
def demo(
    config_path: str | None,
    host: str | None,
    port: int | None,
    http_port: int | None,
    log_level: str | None,
    sessions: int,
    agents: int,
    rate: float,
    duration: float,
    no_live: bool,
) -> None:
    """Serve plus a simulated multi-agent workload, with a live terminal view."""
    from agentcast.demo.run import run_demo

    config = _load(
        config_path, host=host, port=port, http_port=http_port, log_level=log_level or "warning"
    )
    sys.exit(
        run_demo(
            config, sessions=sessions, agents=agents, rate=rate, duration=duration, live=not no_live
        )
    )


@main.group()
def outbox() -> None:
    """The transactional outbox: create its tables, run a relay (see docs/outbox.md)."""


@outbox.command("init")
@click.option(
    "--dsn",
    required=True,
    envvar="AGENTCAST_OUTBOX_DSN",
    help="postgresql://...[?schema=NAME] or sqlite:///path.db",
)
@click.option(
    "--partitions",
    type=int,
    default=16,
    show_default=True,
    help="Partitions keys are hashed into (fixed by the first init).",
)
def outbox_init(dsn: str, partitions: int) -> None:
    """Create the outbox tables (idempotent: running it again changes nothing)."""
    from agentcast.outbox.command import run_init

    try:
        run_init(dsn, partitions)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo("outbox ready", err=True)


@outbox.command("relay")
@click.option(
    "--dsn",
    required=True,
    envvar="AGENTCAST_OUTBOX_DSN",
    help="postgresql://...[?schema=NAME] or sqlite:///path.db",
)
@click.option("--node", required=True, help="WebSocket URL of the node, ws://host:port/v1/ws")
@click.option("--token", default=None, envvar="AGENTCAST_TOKEN", help="Credential for the node.")
@click.option("--name", default=None, help="Relay id (default host:pid:random).")
@click.option("--batch-size", type=int, default=2000, show_default=True)
@click.option(
    "--pipeline",
    type=int,
    default=32,
    show_default=True,
    help="Publishes in flight per partition (1: wait for each ack).",
)
@click.option(
    "--lease", type=float, default=10.0, show_default=True, help="Partition lease, seconds."
)
@click.option(
    "--poll-interval",
    type=float,
    default=1.0,
    show_default=True,
    help="Seconds between polls when no notification arrives.",
)
@click.option(
    "--retention",
    type=float,
    default=86400.0,
    show_default=True,
    help="Seconds published rows are kept before they are deleted.",
)
@click.option("--purge-interval", type=float, default=60.0, show_default=True)
@click.option(
    "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port."
)
@click.option("--log-level", default="info", show_default=True)
def outbox_relay(
    dsn: str,
    node: str,
    token: str | None,
    name: str | None,
    batch_size: int,
    pipeline: int,
    lease: float,
    poll_interval: float,
    retention: float,
    purge_interval: float,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Publish committed outbox rows to a node until SIGINT/SIGTERM."""
    from agentcast.outbox.command import run_relay

    try:
        run_relay(
            dsn,
            node,
            name=name,
            token=token,
            batch_size=batch_size,
            pipeline=pipeline,
            lease=lease,
            poll_interval=poll_interval,
            retention=retention,
            purge_interval=purge_interval,
            metrics_port=metrics_port,
            log_level=log_level,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.option(
    "--http",
    "http_url",
    default="http://127.0.0.1:8766",
    show_default=True,
    help="The node's HTTP address.",
)
@click.option("--key", default=None, help="Admin API key (needed when authentication is on).")
def drain(http_url: str, key: str | None) -> None:
    """Ask a running node to drain: it stops accepting, tells every client to reconnect
    elsewhere (close code 4000) and exits."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{http_url.rstrip('/')}/v1/admin/drain", method="POST")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            click.echo(f"draining {http_url} ({response.status})")
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode(errors="replace")
        raise click.ClickException(f"{http_url} refused: {exc.code} {detail}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach {http_url}: {exc}") from None


@main.group()
def bench() -> None:
    """Benchmarks that print JSON (see docs/benchmarks.md)."""


@bench.command("fanout")
@click.option(
    "--subscribers", default="1000", show_default=True, help="A count or a comma list of counts."
)
@click.option("--messages", type=int, default=200, show_default=True)
@click.option("--size", type=int, default=64, show_default=True, help="Payload bytes.")
@click.option(
    "--rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Messages per second (0: burst, as fast as acks allow).",
)
@click.option(
    "--server",
    default="agentcast",
    show_default=True,
    help="A comma list of agentcast, naive, socketio, ws-redis, nats-ws, socketio-node.",
)
@click.option("--idle", is_flag=True, help="Only open the connections and report RSS each.")
@_result_options
def bench_fanout(**options: Any) -> None:
    """Fan-out from one publisher to many subscribers over loopback."""
    from agentcast.bench.fanout import run_fanout_cli

    sys.exit(run_fanout_cli(**options))


@bench.command("outbox")
@click.option(
    "--postgres-dsn",
    "pg_dsn",
    default="postgresql://postgres@127.0.0.1:5432/test",
    show_default=True,
    help="PostgreSQL holding the outbox (a throwaway schema, dropped after).",
)
@click.option(
    "--rate", type=float, default=1000.0, show_default=True, help="Events/s of the latency phase."
)
@click.option(
    "--seconds", type=float, default=10.0, show_default=True, help="Length of the latency phase."
)
@click.option(
    "--messages",
    type=int,
    default=50_000,
    show_default=True,
    help="Events of the throughput phase.",
)
@click.option(
    "--batch", type=int, default=100, show_default=True, help="Events per writer transaction."
)
@click.option("--partitions", type=int, default=16, show_default=True)
@click.option("--relay-batch", type=int, default=2000, show_default=True)
@click.option(
    "--pipeline", type=int, default=32, show_default=True, help="Relay publishes in flight."
)
@click.option(
    "--writers", type=int, default=8, show_default=True, help="Concurrent writer connections."
)
@_result_options
def bench_outbox(**options: Any) -> None:
    """Commit-to-delivered latency and events/s through an outbox relay on PostgreSQL."""
    from agentcast.outbox.bench import run_outbox_cli

    sys.exit(run_outbox_cli(**options))


@bench.command("durable")
@click.option(
    "--store",
    "stores",
    default="sqlite,postgres",
    show_default=True,
    help="History stores to measure, comma-separated: sqlite, postgres, memory.",
)
@click.option(
    "--publishers",
    default="1,10,100",
    show_default=True,
    help="Concurrent publisher connections per row, comma-separated.",
)
@click.option(
    "--messages",
    type=int,
    default=100_000,
    show_default=True,
    help="Acked publishes per row, split evenly over its publishers.",
)
@click.option("--size", type=int, default=64, show_default=True, help="Payload bytes.")
@click.option(
    "--window",
    type=int,
    default=64,
    show_default=True,
    help="Unanswered publishes allowed per publisher connection.",
)
@click.option(
    "--resume-events",
    type=int,
    default=10_000,
    show_default=True,
    help="Events a resuming subscriber has missed (0: skip the resume).",
)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds each phase may take before it is cut short.",
)
@click.option(
    "--postgres-dsn",
    "pg_dsn",
    default="postgresql://postgres@127.0.0.1:5432/test",
    show_default=True,
    help="PostgreSQL for --store postgres (a throwaway schema per node, dropped after).",
)
@_result_options
def bench_durable(**options: Any) -> None:
    """Acked durable publishes per second and resume time, per history store."""
    from agentcast.bench.durable import run_durable_cli

    sys.exit(run_durable_cli(**options))


@bench.command("cluster")
@click.option(
    "--broker",
    type=click.Choice(["redis", "nats"]),
    required=True,
    help="The broker linking the nodes (on 127.0.0.1, default port).",
)
@click.option("--nodes", type=int, default=3, show_default=True, help="Node processes.")
@click.option(
    "--subscribers",
    type=int,
    default=3000,
    show_default=True,
    help="Subscribers in all, spread evenly over the nodes.",
)
@click.option("--messages", type=int, default=200, show_default=True)
@click.option("--size", type=int, default=64, show_default=True, help="Payload bytes.")
@click.option(
    "--rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Messages per second (0: burst, as fast as acks allow).",
)
@_result_options
def bench_cluster(**options: Any) -> None:
    """Fan-out over several nodes linked by a broker, against one node."""
    from agentcast.bench.cluster import run_cluster_cli

    sys.exit(run_cluster_cli(**options))


def _add_commands() -> None:
    """The commands that live next to what they run."""
    from agentcast.bench.plot import plot
    from agentcast.bench.sessions_cli import sessions
    from agentcast.bench.workflow import workflow as bench_workflow
    from agentcast.chaos.command import chaos
    from agentcast.orchestration.command import orchestrate, workflow

    for command in (sessions, plot, bench_workflow):
        bench.add_command(command)
    for command in (chaos, orchestrate, workflow):
        main.add_command(command)


_add_commands()
