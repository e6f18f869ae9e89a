"""``kill_node``: ``kill -9`` a durable SQLite node mid-publish, restart it, repeat.

Two SDK publishers (one topic each) publish numbered events with acks and idempotency keys
at a fixed rate; two SDK subscribers take both topics. Each time another share of the
events is acknowledged the node is killed with SIGKILL and restarted on the same ports and
SQLite file; every client reconnects by itself (publishers resend unacknowledged publishes,
subscribers resume from their last position). Checked: no acknowledged event lost, no
duplicate after SDK dedupe, per-topic order at the acked positions, and that the node really
was killed and every client reconnected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack

from agentcast.chaos.invariants import History, check
from agentcast.chaos.processes import NodeProcess
from agentcast.chaos.recorder import Recorder
from agentcast.chaos.scenarios.common import (
    ScenarioResult,
    Settings,
    background,
    client,
    expect,
    node_config,
)

TOPICS = ("chaos.kill.a", "chaos.kill.b")
RATE = 200.0  # events/s per topic
SETTLE = 60.0  # seconds for the last events to arrive after the last ack


async def run(settings: Settings) -> ScenarioResult:
    seconds = settings.length(full=20.0, short=4.0)
    kills = 2 if settings.short else 4
    count = max(int(RATE * seconds), 50)
    node = NodeProcess(settings.directory, node_config(settings.directory / "history.db"))
    recorder = Recorder(History())
    try:
        node.start()
        await node.wait_ready()
        async with AsyncExitStack() as stack:
            subs = {}
            for name in ("sub-1", "sub-2"):
                sdk = await stack.enter_async_context(client(node.ws_url, name))
                subs[name] = (sdk, [await sdk.subscribe(topic) for topic in TOPICS])
                recorder.require(name, *TOPICS)
            pubs = [
                await stack.enter_async_context(client(node.ws_url, f"pub-{i}"))
                for i in range(len(TOPICS))
            ]
            consumers = [
                recorder.consume(name, sub)
                for name, (_, topic_subs) in subs.items()
                for sub in topic_subs
            ]
            async with background(*consumers):
                publishing = asyncio.gather(
                    *(
                        recorder.publish_numbered(pub, topic, topic, count, rate=RATE)
                        for pub, topic in zip(pubs, TOPICS, strict=True)
                    )
                )
                total = count * len(TOPICS)
                done_kills = 0
                for k in range(1, kills + 1):
                    threshold = total * k // (kills + 1)
                    reached = await recorder.wait_until(
                        _acked_at_least(recorder, threshold), SETTLE
                    )
                    if not reached or len(recorder.history.acked) >= total:
                        break
                    node.kill()
                    node.start()
                    await node.wait_ready()
                    done_kills += 1
                await publishing
                await recorder.wait_for_all(SETTLE)
            reconnects = {c.name: c.reconnects for c in [*pubs, *(s[0] for s in subs.values())]}
        verdicts = check(recorder.history, ("no_acked_loss", "no_duplicate", "order"))
        verdicts.append(
            expect(
                "node_killed_and_clients_reconnected",
                done_kills == kills and all(n >= done_kills for n in reconnects.values()),
                f"{done_kills}/{kills} kill -9 mid-publish, reconnects {reconnects}",
            )
        )
        stats = {
            "events": total,
            "acked": len(recorder.history.acked),
            "failed_publishes": recorder.failed_publishes,
            "kills": done_kills,
        }
        return ScenarioResult(verdicts, stats)
    finally:
        node.kill()


def _acked_at_least(recorder: Recorder, count: int) -> Callable[[], bool]:
    return lambda: len(recorder.history.acked) >= count
