"""The invariant checker on hand-made histories: each invariant passes on a clean history
and fails on one built to break it."""

from __future__ import annotations

import pytest

from agentcast.chaos.invariants import (
    BASELINE,
    FAULT,
    INVARIANTS,
    MIB,
    Ack,
    History,
    Limits,
    Receipt,
    Sample,
    check,
    p99,
)

TOPIC = "chaos.t"


def clean_history(events: int = 10) -> History:
    """Acks 1..events, two subscribers receiving all of them in order, flat memory and fds,
    equal latency in both phases."""
    history = History()
    for seq in range(1, events + 1):
        history.acked.append(Ack(TOPIC, f"e-{seq}", seq, "E1"))
    for name in ("s1", "s2"):
        history.received[name] = [
            Receipt(TOPIC, f"e-{seq}", seq, "E1", 0.002, BASELINE if seq <= events // 2 else FAULT)
            for seq in range(1, events + 1)
        ]
        history.required[name] = (TOPIC,)
    history.samples = [Sample(BASELINE, 100 * MIB, 20), Sample(FAULT, 101 * MIB, 21)]
    return history


def verdict(history: History, name: str, limits: Limits | None = None) -> tuple[bool, str]:
    (result,) = check(history, (name,), limits)
    assert result.name == name
    return result.ok, result.detail


def test_a_clean_history_passes_every_invariant() -> None:
    verdicts = check(clean_history())
    assert [v.name for v in verdicts] == list(INVARIANTS)
    assert all(v.ok for v in verdicts), verdicts


def test_a_lost_acked_event_breaks_no_acked_loss() -> None:
    history = clean_history()
    del history.received["s2"][3]
    ok, detail = verdict(history, "no_acked_loss")
    assert not ok
    assert "s2/chaos.t misses 1 (e-4)" in detail


def test_loss_is_judged_only_for_required_topics() -> None:
    history = clean_history()
    history.acked.append(Ack("chaos.other", "o-1", 1, "E9"))
    assert verdict(history, "no_acked_loss")[0]  # nobody must see chaos.other
    history.required["s1"] = (TOPIC, "chaos.other")
    assert not verdict(history, "no_acked_loss")[0]
    history.received["s1"].append(Receipt("chaos.other", "o-1", 1, "E9"))
    assert verdict(history, "no_acked_loss")[0]


def test_no_ack_at_all_is_not_a_pass() -> None:
    assert not verdict(History(), "no_acked_loss")[0]


def test_a_duplicate_breaks_no_duplicate() -> None:
    history = clean_history()
    history.received["s1"].append(history.received["s1"][4])
    ok, detail = verdict(history, "no_duplicate")
    assert not ok
    assert "chaos.t:e-5x2" in detail


def test_a_swap_breaks_order() -> None:
    history = clean_history()
    receipts = history.received["s1"]
    receipts[2], receipts[3] = receipts[3], receipts[2]
    ok, detail = verdict(history, "order")
    assert not ok
    assert "seq 3 (e-3) after 4" in detail


def test_an_epoch_change_breaks_order() -> None:
    history = clean_history()
    history.received["s1"].append(Receipt(TOPIC, "e-11", 11, "E2"))
    ok, detail = verdict(history, "order")
    assert not ok and "epoch changed" in detail


def test_an_event_off_its_acked_position_breaks_order() -> None:
    history = clean_history()
    history.acked[0] = Ack(TOPIC, "e-1", 7, "E1")
    ok, detail = verdict(history, "order")
    assert not ok and "e-1 at seq 1, acked at 7" in detail


def test_an_event_at_or_before_since_breaks_order() -> None:
    history = clean_history()
    history.since["s1"] = {TOPIC: 0}
    assert verdict(history, "order")[0]
    history.since["s1"] = {TOPIC: 1}
    ok, detail = verdict(history, "order")
    assert not ok and "seq 1 (e-1) at or before since" in detail


def test_receipts_of_unacked_publishes_are_reported_not_failed() -> None:
    history = clean_history()
    history.received["s1"].append(Receipt(TOPIC, "e-11", 11, "E1"))
    ok, detail = verdict(history, "no_acked_loss")
    assert ok and "1 receipts of publishes never acked" in detail


def test_memory_growth_past_the_allowance_breaks_memory_bounded() -> None:
    history = clean_history()
    limits = Limits(memory_allowance=8 * MIB)
    assert verdict(history, "memory_bounded", limits)[0]
    history.samples.append(Sample(FAULT, 109 * MIB, 21))
    ok, detail = verdict(history, "memory_bounded", limits)
    assert not ok and "+9.0 MiB" in detail


def test_no_memory_sample_is_not_a_pass() -> None:
    history = clean_history()
    history.samples = []
    assert not verdict(history, "memory_bounded")[0]
    assert not verdict(history, "fds_bounded")[0]


def test_fds_left_open_break_fds_bounded() -> None:
    history = clean_history()
    history.samples.append(Sample("after", 100 * MIB, 20 + 17))
    ok, detail = verdict(history, "fds_bounded", Limits(fd_allowance=16))
    assert not ok and "final 37" in detail
    history.samples.append(Sample("after", 100 * MIB, 22))  # a peak that closed again
    assert verdict(history, "fds_bounded", Limits(fd_allowance=16))[0]


def test_a_degraded_p99_breaks_latency() -> None:
    history = clean_history(200)
    limits = Limits(latency_factor=3.0, latency_floor=0.001)
    assert verdict(history, "latency", limits)[0]
    slow = history.received["s1"]
    for i, r in enumerate(slow):
        if r.phase == FAULT and i % 10 == 0:
            slow[i] = Receipt(r.topic, r.key, r.seq, r.epoch, 0.050, FAULT)
    ok, detail = verdict(history, "latency", limits)
    assert not ok and "fault 50.0 ms" in detail


def test_the_latency_floor_keeps_a_tiny_baseline_from_failing() -> None:
    history = clean_history(200)
    bumped = [
        Receipt(r.topic, r.key, r.seq, r.epoch, 0.008 if r.phase == FAULT else r.latency, r.phase)
        for r in history.received["s1"]
    ]
    history.received["s1"] = bumped
    assert not verdict(history, "latency", Limits(latency_factor=3.0, latency_floor=0.001))[0]
    assert verdict(history, "latency", Limits(latency_factor=3.0, latency_floor=0.005))[0]


def test_a_phase_without_samples_is_not_a_pass() -> None:
    history = clean_history()
    for receipts in history.received.values():
        receipts[:] = [r for r in receipts if r.phase == BASELINE]
    ok, detail = verdict(history, "latency")
    assert not ok and "fault 0" in detail


def test_p99_is_the_nearest_rank() -> None:
    assert p99([float(n) for n in range(1, 101)]) == 99.0
    assert p99([5.0]) == 5.0


def test_an_unknown_invariant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown invariants: nope"):
        check(History(), ("nope",))
