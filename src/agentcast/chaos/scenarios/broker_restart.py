"""``broker_restart``: the broker linking two nodes dies (``kill -9``) and comes back.

For Redis and then NATS, each a private server on a free port: two nodes share one SQLite
history; an SDK publisher on node ``b`` publishes durable events at a fixed rate and one SDK
subscriber on each node records them. Mid-traffic the broker is killed, kept down, and
restarted on the same port. Checked: no acked loss, no duplicate, order (the subscriber on
``a`` gets what was acked while the broker was down by filling the gap from history); the
nodes reported the outage (``/readyz`` 503) and both are ready again afterwards.
"""

from __future__ import annotations

import asyncio
import time

from agentcast.chaos.invariants import History, Verdict, check
from agentcast.chaos.recorder import Recorder
from agentcast.chaos.scenarios.cluster import Cluster, all_ready, cluster, cross_traffic
from agentcast.chaos.scenarios.common import ScenarioResult, Settings, expect

KINDS = ("redis", "nats")
DEGRADE_ATTEMPTS = 200  # x 0.05 s for a node to notice the broker is gone


async def run(settings: Settings) -> ScenarioResult:
    down = settings.length(full=10.0, short=2.0)
    warmup, tail = (1.0, 2.0) if settings.short else (5.0, 5.0)
    recorder = Recorder(History())
    verdicts: list[Verdict] = []
    outages: dict[str, float] = {}
    for kind in KINDS:
        async with cluster(settings.directory / kind, kind) as rig:

            async def fault(rig: Cluster = rig, kind: str = kind) -> list[Verdict]:
                rig.broker.kill()
                started = time.monotonic()
                degraded = await rig.a.wait_status(503, DEGRADE_ATTEMPTS)
                await asyncio.sleep(down)  # the outage's length is the point here
                rig.broker.start()
                await rig.broker.wait_ready()
                ready = await all_ready([rig.a, rig.b])
                outages[kind] = round(time.monotonic() - started, 2)
                return [
                    expect(
                        f"broker_outage_seen[{kind}]",
                        degraded and ready,
                        f"/readyz 503 during the outage: {degraded}; both ready after the "
                        f"restart: {ready} ({outages[kind]:.1f} s down)",
                    )
                ]

            verdicts += await cross_traffic(
                rig, recorder, f"chaos.restart.{kind}", fault, warmup=warmup, tail=tail
            )
    verdicts = check(recorder.history, ("no_acked_loss", "no_duplicate", "order")) + verdicts
    stats = {
        "acked": len(recorder.history.acked),
        "failed_publishes": recorder.failed_publishes,
        "outage_seconds": outages,
    }
    return ScenarioResult(verdicts, stats)
