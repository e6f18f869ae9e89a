"""What ``agentcast outbox init`` and ``agentcast outbox relay`` run."""

from __future__ import annotations

import asyncio

from agentcast.outbox.metrics import RelayMetrics
from agentcast.outbox.relay import Relay, open_store
from agentcast.outbox.schema import init_outbox


def run_init(dsn: str, partitions: int) -> None:
    """Create the outbox at ``dsn`` (idempotent)."""
    from agentcast.runtime import run

    run(init_outbox(dsn, partitions))


def run_relay(
    dsn: str,
    node: str,
    *,
    name: str | None,
    token: str | None,
    batch_size: int,
    pipeline: int,
    lease: float,
    poll_interval: float,
    retention: float,
    purge_interval: float,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Relay the outbox at ``dsn`` to ``node`` until SIGINT/SIGTERM."""
    from agentcast.runtime import run, setup_logging, stop_on_signals

    setup_logging(log_level)
    metrics = RelayMetrics()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
    relay = Relay(
        open_store(dsn),
        node,
        name=name,
        token=token,
        batch_size=batch_size,
        pipeline=pipeline,
        lease=lease,
        poll_interval=poll_interval,
        retention=retention,
        purge_interval=purge_interval,
        metrics=metrics,
    )

    async def relay_until_signal() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await relay.run(stop)

    run(relay_until_signal())
