"""``broker_faults``: the node-broker link degrades through a TCP fault proxy.

For Redis and then NATS (private servers on free ports): two nodes share one SQLite
history and reach the broker only through a :class:`~agentcast.chaos.proxy.FaultProxy`. An
SDK publisher on node ``b`` publishes durable events at a fixed rate, one SDK subscriber
on each node records them, and the link goes through, in turn: added latency (100 ms each
way), a cut (a partition: bytes held, new connections refused), a heal, and a reset (every
link connection aborted with a TCP RST). Checked: no acked loss, no duplicate, order; the
faults really hit the nodes' connections (the proxy reset some and the nodes reconnected
through it); both nodes are ready again afterwards.
"""

from __future__ import annotations

import asyncio

from agentcast.chaos.invariants import History, Verdict, check
from agentcast.chaos.recorder import Recorder
from agentcast.chaos.scenarios.cluster import Cluster, all_ready, cluster, cross_traffic
from agentcast.chaos.scenarios.common import ScenarioResult, Settings, expect

KINDS = ("redis", "nats")
LATENCY = 0.1  # seconds added each way


async def run(settings: Settings) -> ScenarioResult:
    step = settings.length(full=10.0, short=2.0)  # length of each fault
    warmup, tail = (1.0, 2.0) if settings.short else (5.0, 5.0)
    recorder = Recorder(History())
    verdicts: list[Verdict] = []
    figures: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        async with cluster(settings.directory / kind, kind, proxied=True) as rig:

            async def fault(rig: Cluster = rig, kind: str = kind) -> list[Verdict]:
                proxy = rig.proxy
                assert proxy is not None
                proxy.set_latency(LATENCY)
                await asyncio.sleep(step)  # each fault lasts `step` seconds, by design
                await proxy.cut()
                await asyncio.sleep(step)
                await proxy.heal()
                healed = await all_ready([rig.a, rig.b])
                before = proxy.accepted
                reset = proxy.reset()
                await asyncio.sleep(step)
                reconnected = proxy.accepted - before
                ready = await all_ready([rig.a, rig.b])
                figures[kind] = {"reset": reset, "reconnected": reconnected}
                return [
                    expect(
                        f"link_faults_applied[{kind}]",
                        healed and reset > 0 and reconnected > 0 and ready,
                        f"latency {LATENCY * 1000:.0f} ms and cut {step:g} s each, ready after "
                        f"heal: {healed}; {reset} connections reset, {reconnected} "
                        f"reconnected through the proxy, ready after: {ready}",
                    )
                ]

            verdicts += await cross_traffic(
                rig, recorder, f"chaos.faults.{kind}", fault, warmup=warmup, tail=tail
            )
    verdicts = check(recorder.history, ("no_acked_loss", "no_duplicate", "order")) + verdicts
    stats = {
        "acked": len(recorder.history.acked),
        "failed_publishes": recorder.failed_publishes,
        "links": figures,
    }
    return ScenarioResult(verdicts, stats)
