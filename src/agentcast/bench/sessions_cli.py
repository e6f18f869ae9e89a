"""The ``agentcast bench sessions`` command (options only; the run is lazy-imported)."""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

# --preset target: 50 x (190 + 10) = 10,000 connections at 100,000 deliveries/s.
PRESETS: dict[str, dict[str, Any]] = {
    "target": {"sessions": 50, "agents": 190, "observers": 10, "rate": 100_000.0},
}


def apply_preset(options: dict[str, Any], preset: str | None, explicit: set[str]) -> dict[str, Any]:
    """``options`` with the values of ``preset`` for every option not in ``explicit`` (the
    ones given on the command line)."""
    chosen = PRESETS.get(preset or "", {})
    return {**options, **{k: v for k, v in chosen.items() if k not in explicit}}


@click.command("sessions")
@click.option("--sessions", type=int, default=20, show_default=True, help="Sessions.")
@click.option("--agents", type=int, default=100, show_default=True, help="Agents per session.")
@click.option(
    "--observers",
    type=int,
    default=5,
    show_default=True,
    help="UI observers per session (on the session's wildcard).",
)
@click.option(
    "--global-observers",
    type=int,
    default=0,
    show_default=True,
    help="Observers of the whole tenant (t.>): every publication reaches each of them.",
)
@click.option(
    "--rate",
    type=float,
    default=20_000.0,
    show_default=True,
    help="Target deliveries per second (open-loop publishes are paced to reach it).",
)
@click.option("--seconds", type=float, default=20.0, show_default=True, help="Measured time.")
@click.option("--warmup", type=float, default=5.0, show_default=True, help="Unmeasured lead.")
@click.option("--size", type=int, default=128, show_default=True, help="Payload bytes.")
@click.option(
    "--direct",
    type=float,
    default=0.5,
    show_default=True,
    help="Share of publishes sent to one agent's inbox instead of the session's chat.",
)
@click.option(
    "--processes",
    type=int,
    default=1,
    show_default=True,
    help="Load processes sharing the sessions (all on the load CPU).",
)
@click.option(
    "--policy",
    type=click.Choice(["disconnect", "drop_oldest", "drop_newest"]),
    default=None,
    help="Slow-consumer policy of every subscription (default: the node's, disconnect).",
)
@click.option(
    "--max-queue-messages",
    type=int,
    default=1024,
    show_default=True,
    help="The node's outbound queue bound per connection.",
)
@click.option(
    "--pin/--no-pin",
    default=True,
    show_default=True,
    help="Pin the server to the first CPU and the loads to the second.",
)
@click.option(
    "--preset",
    type=click.Choice(sorted(PRESETS)),
    default=None,
    help="target: 50 sessions x (190 agents + 10 observers) = 10,000 connections at "
    "100,000 deliveries/s (explicit --sessions/--agents/--observers/--rate still win).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False),
    default=None,
    help="Append the JSON result as one line to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.pass_context
def sessions(ctx: click.Context, /, **options: Any) -> None:
    """Sessions of agents and UI observers: latency, throughput, CPU, queues, drops."""
    from agentcast.bench.sessions import NodeOptions, run_sessions_cli
    from agentcast.bench.sessions_plan import SessionsPlan

    preset = options.pop("preset")
    explicit = {
        name for name in options if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    options = apply_preset(options, preset, explicit)
    node = NodeOptions(
        options.pop("max_queue_messages"), options.pop("policy"), pin=options.pop("pin")
    )
    as_json = options.pop("as_json")
    output = options.pop("output")
    plan = SessionsPlan(**options)
    sys.exit(run_sessions_cli(plan, node, as_json=as_json, output=output))
