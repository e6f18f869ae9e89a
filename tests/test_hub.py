from __future__ import annotations

import pytest

from agentcast.errors import NotSubscribed, PayloadTooLarge, TooManySubscriptions
from agentcast.hub.config import HubConfig
from agentcast.protocol.codes import CloseCode
from agentcast.protocol.commands import Policy, Publish
from tests.fakes import FakeSink, make_hub


def pub(topic: str, payload: object = None, **kw: object) -> Publish:
    return Publish(None, topic, payload, **kw)  # type: ignore[arg-type]


def test_one_encoding_shared_by_every_subscriber_and_one_write_per_flush() -> None:
    hub, loop = make_hub()
    sinks = [FakeSink() for _ in range(50)]
    for sink in sinks:
        hub.subscribe(hub.connect(sink), "acme.run.>", None, "key")
    for n in range(10):
        hub.publish(pub("acme.run.chat", {"n": n}), "ac://client/p")
    assert all(not s.writes for s in sinks), "nothing is written before the loop turns"
    loop.run()
    for sink in sinks:
        assert len(sink.writes) == 1, "ten queued frames leave in one transport write"
        assert [e["seq"] for e in sink.events()] == list(range(1, 11))
    assert len({id(s.writes[0]) for s in sinks}) == 50  # joined per connection...
    frames = {s.writes[0] for s in sinks}
    assert len(frames) == 1  # ...but byte-identical: encoded once
    assert hub.stats.deliveries == 500 and hub.stats.writes == 50


def test_event_is_delivered_once_per_connection_with_overlapping_patterns() -> None:
    hub, loop = make_hub()
    sink = FakeSink()
    conn = hub.connect(sink)
    hub.subscribe(conn, "acme.>", Policy.DROP_OLDEST, "key")
    hub.subscribe(conn, "acme.run.chat", None, "key")
    hub.subscribe(conn, "acme.*.chat", None, "key")
    hub.publish(pub("acme.run.chat", 1), "s")
    loop.run()
    assert len(sink.events()) == 1


def test_envelope_fields_and_positions() -> None:
    hub, loop = make_hub()
    sink = FakeSink()
    hub.subscribe(hub.connect(sink), "acme.a", None, "key")
    r1 = hub.publish(
        pub(
            "acme.a",
            {"x": 1},
            headers={"h": "v"},
            correlation_id="c",
            causation_id="e0",
            lamport=41,
        ),
        "ac://client/p",
    )
    r2 = hub.publish(pub("acme.b", 2), "ac://client/p")
    r3 = hub.publish(pub("acme.a", 3), "ac://client/p")
    loop.run()
    assert (r1.seq, r2.seq, r3.seq) == (1, 1, 2)
    assert r1.epoch == r3.epoch
    assert r1.lamport == 42 and r3.lamport == 44
    event = sink.events()[0]
    assert event["id"] == r1.id and event["payload"] == {"x": 1}
    assert event["headers"] == {"h": "v"} and event["correlation_id"] == "c"
    assert event["causation_id"] == "e0" and event["source"] == "ac://client/p"
    assert str(event["time"]).endswith("Z")
    assert r1.id < r3.id  # UUIDv7 ids sort by time


def test_idempotency_key_returns_original_position_and_is_not_redelivered() -> None:
    now = [0.0]
    hub, loop = make_hub(HubConfig(dedupe_window=10), clock=lambda: now[0])
    sink = FakeSink()
    hub.subscribe(hub.connect(sink), "acme.a", None, "key")
    first = hub.publish(pub("acme.a", 1, idempotency_key="k1"), "s")
    again = hub.publish(pub("acme.a", 1, idempotency_key="k1"), "s")
    other_tenant = hub.publish(pub("other.a", 1, idempotency_key="k1"), "s")
    assert again.duplicate and (again.id, again.seq) == (first.id, first.seq)
    assert not other_tenant.duplicate
    now[0] = 11.0
    later = hub.publish(pub("acme.a", 1, idempotency_key="k1"), "s")
    assert not later.duplicate and later.seq == 2
    loop.run()
    assert [e["seq"] for e in sink.events()] == [1, 2]


def test_payload_limit_refuses_before_sequencing() -> None:
    hub, _ = make_hub(HubConfig(max_payload_bytes=10))
    with pytest.raises(PayloadTooLarge):
        hub.publish(pub("acme.a", "x" * 20), "s")
    assert hub.publish(pub("acme.a", "ok"), "s").seq == 1


def test_slow_consumer_disconnect_does_not_disturb_others() -> None:
    hub, loop = make_hub(HubConfig(max_queue_messages=5))
    slow, fast = FakeSink(), FakeSink()
    slow_conn = hub.connect(slow)
    hub.subscribe(slow_conn, "acme.a", Policy.DISCONNECT, "key")
    hub.subscribe(hub.connect(fast), "acme.a", None, "key")
    hub.set_paused(slow_conn, True)  # its socket stopped draining
    for n in range(5):
        hub.publish(pub("acme.a", n), "s")
        loop.run()
    assert slow.closed is None
    hub.publish(pub("acme.a", 5), "s")
    loop.run()
    assert slow.closed == (CloseCode.SLOW_CONSUMER, "slow consumer")
    assert slow_conn.id not in hub.connections and len(hub.index) == 1
    assert [e["seq"] for e in fast.events()] == [1, 2, 3, 4, 5, 6]
    assert hub.stats.slow_disconnects == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Policy.DROP_OLDEST, [5, 6, 7, 8]),
        (Policy.DROP_NEWEST, [1, 2, 3, 4]),
    ],
)
def test_drop_policies_keep_order_and_count_drops(policy: Policy, expected: list[int]) -> None:
    hub, loop = make_hub(HubConfig(max_queue_messages=4))
    sink = FakeSink()
    conn = hub.connect(sink)
    hub.subscribe(conn, "acme.a", policy, "key")
    hub.set_paused(conn, True)
    for n in range(8):
        hub.publish(pub("acme.a", n), "s")
    loop.run()
    assert sink.writes == []
    hub.set_paused(conn, False)
    loop.run()
    assert [e["seq"] for e in sink.events()] == expected
    assert hub.stats.drops == {policy.value: 4}
    assert sink.closed is None


def test_latest_per_key_collapses_by_key_header() -> None:
    hub, loop = make_hub(HubConfig(max_queue_messages=3))
    sink = FakeSink()
    conn = hub.connect(sink)
    hub.subscribe(conn, "acme.>", Policy.LATEST_PER_KEY, "agent")
    hub.set_paused(conn, True)
    for n, agent in enumerate(["a", "b", "c", "a", "b", "a"]):
        hub.publish(pub("acme.status", n, headers={"agent": agent}), "s")
    hub.set_paused(conn, False)
    loop.run()
    latest = {e["headers"]["agent"]: e["payload"] for e in sink.events()}  # type: ignore[index]
    assert latest == {"a": 5, "b": 4, "c": 2}
    assert [e["seq"] for e in sink.events()] == sorted(e["seq"] for e in sink.events())


def test_byte_bound_applies_too() -> None:
    hub, loop = make_hub(HubConfig(max_queue_bytes=1000))
    sink = FakeSink()
    conn = hub.connect(sink)
    hub.subscribe(conn, "acme.a", Policy.DROP_OLDEST, "key")
    hub.set_paused(conn, True)
    for n in range(20):
        hub.publish(pub("acme.a", "x" * 100 + str(n)), "s")
    assert conn.queue.bytes <= 1000
    hub.set_paused(conn, False)
    loop.run()
    seqs = [e["seq"] for e in sink.events()]
    assert seqs[-1] == 20 and seqs == sorted(seqs) and len(seqs) < 20


def test_replies_are_never_dropped_by_policies() -> None:
    hub, loop = make_hub(HubConfig(max_queue_messages=2))
    sink = FakeSink()
    conn = hub.connect(sink)
    hub.subscribe(conn, "acme.a", Policy.DROP_OLDEST, "key")
    hub.set_paused(conn, True)
    conn.send_control(b"\x81\x02{}")
    conn.send_control(b"\x81\x02{}")
    for n in range(5):
        hub.publish(pub("acme.a", n), "s")
    hub.set_paused(conn, False)
    loop.run()
    assert sink.writes[0].startswith(b"\x81\x02{}\x81\x02{}")


def test_subscription_limits_and_unsubscribe() -> None:
    hub, loop = make_hub(HubConfig(max_subscriptions=2))
    sink = FakeSink()
    conn = hub.connect(sink)
    hub.subscribe(conn, "acme.a", None, "key")
    hub.subscribe(conn, "acme.b", None, "key")
    hub.subscribe(conn, "acme.b", Policy.DROP_NEWEST, "key")  # replacing is not a new one
    with pytest.raises(TooManySubscriptions):
        hub.subscribe(conn, "acme.c", None, "key")
    hub.unsubscribe(conn, "acme.a")
    with pytest.raises(NotSubscribed):
        hub.unsubscribe(conn, "acme.a")
    hub.publish(pub("acme.a", 1), "s")
    hub.publish(pub("acme.b", 1), "s")
    loop.run()
    assert [e["topic"] for e in sink.events()] == ["acme.b"]


def test_sweep_pings_silent_connections_and_closes_dead_ones() -> None:
    now = [0.0]
    hub, _ = make_hub(HubConfig(heartbeat_interval=5, idle_timeout=12), clock=lambda: now[0])
    dead, alive = FakeSink(), FakeSink()
    hub.connect(dead)
    alive_conn = hub.connect(alive)
    now[0] = 6
    hub.sweep(now[0])
    assert dead.pings == 1 and alive.pings == 1
    now[0] = 7
    hub.sweep(now[0])
    assert dead.pings == 1, "at most one ping per interval"
    alive_conn.last_recv = 7  # its pong came back
    now[0] = 11.5
    hub.sweep(now[0])
    assert dead.pings == 2 and alive.pings == 1
    now[0] = 13
    hub.sweep(now[0])
    assert dead.closed == (CloseCode.IDLE_TIMEOUT, "idle timeout")
    assert alive.closed is None


def test_epoch_changes_when_the_sequencer_forgets_a_topic() -> None:
    hub, _ = make_hub(HubConfig(max_topics=2))
    first = hub.publish(pub("acme.a", 1), "s")
    hub.publish(pub("acme.b", 1), "s")
    hub.publish(pub("acme.c", 1), "s")  # evicts acme.a
    again = hub.publish(pub("acme.a", 1), "s")
    assert again.seq == 1 and again.epoch != first.epoch


def test_close_all_flushes_then_closes_with_shutdown() -> None:
    hub, _ = make_hub()
    sink = FakeSink()
    hub.subscribe(hub.connect(sink), "acme.a", None, "key")
    hub.publish(pub("acme.a", 1), "s")
    hub.close_all(CloseCode.SHUTDOWN, "bye")
    assert len(sink.events()) == 1 and sink.closed == (CloseCode.SHUTDOWN, "bye")
    assert not hub.connections
