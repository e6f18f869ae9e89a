"""Token bucket and connection limits, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from agentcast.protocol.codes import should_reconnect
from agentcast.security.errors import TooManyConnections
from agentcast.security.limits import ConnectionLimits, TokenBucket


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refuses() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.try_take() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.retry_after() == pytest.approx(0.1)


def test_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    for _ in range(5):
        assert bucket.try_take()
    clock.now += 0.25  # 2.5 tokens
    assert bucket.try_take()
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.now += 3600
    assert bucket.available == pytest.approx(5.0)
    assert sum(bucket.try_take() for _ in range(10)) == 5


def test_a_refused_take_takes_nothing() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, burst=2, clock=clock)
    assert bucket.try_take(2)
    clock.now += 0.5
    assert not bucket.try_take()
    assert bucket.available == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.try_take()


def test_a_clock_going_backwards_adds_nothing() -> None:
    clock = FakeClock(1000.0)
    bucket = TokenBucket(rate=100, burst=1, clock=clock)
    assert bucket.try_take()
    clock.now -= 500
    assert not bucket.try_take()
    clock.now += 0.01  # still before the last refill
    assert not bucket.try_take()
    clock.now = 1000.02
    assert bucket.try_take()


def test_fractional_rates() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=0.5, burst=1, clock=clock)
    assert bucket.try_take()
    clock.now += 1.9
    assert not bucket.try_take()
    assert bucket.retry_after() == pytest.approx(0.1)
    clock.now += 0.1
    assert bucket.try_take()


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (1, 0.5)])
def test_bucket_parameters_are_checked(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, FakeClock())


def test_connections_per_tenant_are_bounded_and_released() -> None:
    limits = ConnectionLimits(per_tenant=2)
    first = limits.acquire("acme", "a")
    limits.acquire("acme", "b")
    with pytest.raises(TooManyConnections) as info:
        limits.acquire("acme", "c")
    assert info.value.code == "too_many_connections"
    assert info.value.reason == "tenant_limit"
    assert limits.refused["tenant_limit"] == 1
    limits.acquire("globex", "a")  # another tenant is not affected
    first.release()
    limits.acquire("acme", "c")
    assert limits.tenant_count("acme") == 2


def test_connections_per_subject_are_bounded_per_tenant() -> None:
    limits = ConnectionLimits(per_subject=1)
    limits.acquire("acme", "planner")
    with pytest.raises(TooManyConnections) as info:
        limits.acquire("acme", "planner")
    assert info.value.reason == "subject_limit"
    limits.acquire("globex", "planner")  # same name, other tenant
    limits.acquire("acme", None)  # not counted per subject
    assert limits.subject_count("acme", "planner") == 1
    assert limits.refused == {"tenant_limit": 0, "subject_limit": 1}


def test_a_refused_acquire_counts_nothing() -> None:
    limits = ConnectionLimits(per_tenant=5, per_subject=1)
    limits.acquire("acme", "a")
    with pytest.raises(TooManyConnections):
        limits.acquire("acme", "a")
    assert limits.tenant_count("acme") == 1


def test_release_is_idempotent_and_state_is_bounded_by_open_connections() -> None:
    limits = ConnectionLimits(per_tenant=3, per_subject=3)
    slots = [limits.acquire(f"t{i % 7}", f"s{i}") for i in range(20)]
    assert limits.tracked == 7 + 20
    for slot in slots:
        slot.release()
        slot.release()
        assert slot.released
    assert limits.tracked == 0
    assert limits.tenant_count("t0") == 0


def test_zero_means_unlimited() -> None:
    limits = ConnectionLimits()
    for _ in range(1000):
        limits.acquire("acme", "same")
    assert limits.tenant_count("acme") == 1000


def test_close_code_says_retry_later() -> None:
    exc = TooManyConnections("full")
    assert exc.close_code is not None
    assert 4000 <= exc.close_code < 4500
    assert should_reconnect(exc.close_code)
