"""The consumer-group state machine, without I/O."""

from __future__ import annotations

from agentcast.hub.groups import READ_AHEAD, ConsumerGroup, GroupSettings
from agentcast.storage.base import StoredEvent


def ev(seq: int, key: str | None = None) -> StoredEvent:
    headers = {} if key is None else {"key": key}
    return StoredEvent(f"id{seq}", "acme.jobs", "e", seq, "t", "s", b"null", headers)


def events(n: int, start: int = 1) -> list[StoredEvent]:
    return [ev(s) for s in range(start, start + n)]


def test_each_event_goes_to_one_member_round_robin_within_in_flight_limits() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings(max_in_flight=2))
    a, b = group.add_member("a"), group.add_member("b")
    assert group.wants_events() == READ_AHEAD
    group.add_events(events(10))
    out, dead = group.assign(0)
    assert not dead and [d.event.seq for d in out] == [1, 2, 3, 4]
    assert a.inflight == {1, 3} and b.inflight == {2, 4}
    assert group.wants_events() == 0  # nobody has room
    assert group.ack(a, 1)
    out, _ = group.assign(0)
    assert [d.event.seq for d in out] == [5] and out[0].member is a


def test_ack_floor_advances_over_contiguous_done_positions() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings(max_in_flight=5))
    m = group.add_member("m")
    group.add_events(events(5))
    group.assign(0)
    for seq in (2, 3, 5):
        assert group.ack(m, seq)
    assert group.floor == 0 and group.done_above == {2, 3, 5}
    group.ack(m, 1)
    assert group.floor == 3 and group.done_above == {5}
    assert not group.ack(m, 1), "a second ack of the same seq is refused"


def test_ack_timeout_redelivers_then_dead_letters_after_max_deliver() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings(ack_timeout=10, max_deliver=2))
    a = group.add_member("a")
    b = group.add_member("b")
    group.add_events(events(1))
    (first,), _ = group.assign(0)
    assert first.attempts == 1 and first.member is a
    assert group.expire(5) == 0
    assert group.expire(10) == 1
    assert not a.inflight
    (second,), _ = group.assign(10)
    assert second.attempts == 2 and second.member is b
    group.expire(20)
    out, dead = group.assign(20)
    assert out == [] and len(dead) == 1
    assert dead[0].reason == "ack timeout" and dead[0].delivery.attempts == 2
    group.mark_done(1)
    assert group.floor == 1


def test_nack_with_delay_redelivers_after_the_delay() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings())
    m = group.add_member("m")
    group.add_events(events(1))
    group.assign(0)
    assert group.nack(m, 1, 5.0, "busy", 0)
    assert group.assign(4) == ([], [])
    (again,), _ = group.assign(5)
    assert again.attempts == 2 and again.last_reason == "nack: busy"


def test_member_leaving_gives_its_deliveries_to_the_others() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings(max_in_flight=4))
    a, b = group.add_member("a"), group.add_member("b")
    group.add_events(events(4))
    group.assign(0)
    assert a.inflight == {1, 3}
    group.remove_member(a, 1)
    out, _ = group.assign(1)
    assert sorted(d.event.seq for d in out) == [1, 3] and all(d.member is b for d in out)
    assert b.inflight == {1, 2, 3, 4}


def test_same_key_events_are_never_in_flight_together() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings(max_in_flight=10, key_header="key"))
    m = group.add_member("m")
    group.add_events([ev(1, "x"), ev(2, "y"), ev(3, "x"), ev(4, None), ev(5, "y")])
    out, _ = group.assign(0)
    assert [d.event.seq for d in out] == [1, 2, 4]
    assert group.ack(m, 1)
    out, _ = group.assign(0)
    assert [d.event.seq for d in out] == [3]
    assert group.ack(m, 2)
    out, _ = group.assign(0)
    assert [d.event.seq for d in out] == [5]


def test_restart_from_saved_progress_skips_done_events() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings(), floor=3, done=frozenset({5, 2}))
    assert group.floor == 3 and group.done_above == {5} and group.cursor == 5
    group.add_member("m")
    group.add_events(events(7))
    out, _ = group.assign(0)
    assert [d.event.seq for d in out] == [6, 7]
    restarted = ConsumerGroup("acme.jobs", "g", GroupSettings(), floor=3, done=frozenset({4}))
    assert restarted.floor == 4


def test_caught_up_until_a_new_event_is_appended() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings())
    group.add_member("m")
    group.caught_up = True
    assert group.wants_events() == 0
    group.notify_appended(1)
    assert group.wants_events() > 0


def test_positions_trimmed_before_they_were_read_count_as_done() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings(max_in_flight=10))
    m = group.add_member("m")
    group.add_events(events(2))
    group.assign(0)
    group.add_events(events(3, start=300))  # 3..299 were removed by retention
    group.assign(0)
    for seq in (1, 2, 300, 301, 302):
        assert group.ack(m, seq)
    assert group.floor == 302 and not group.done_above


def test_a_failed_dead_letter_is_retried() -> None:
    group = ConsumerGroup("acme.jobs", "g", GroupSettings(max_deliver=1, ack_timeout=1))
    group.add_member("m")
    group.add_events(events(1))
    group.assign(0)
    group.expire(1)
    _, dead = group.assign(1)
    assert len(dead) == 1
    group.retry_dead_letter(dead[0], 5)
    assert group.assign(4) == ([], [])
    _, again = group.assign(5)
    assert [d.delivery.event.seq for d in again] == [1]
