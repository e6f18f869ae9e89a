"""Rate and connection limits: a token bucket and per-tenant/per-subject connection counts.

Both take their time from an injected ``clock`` (seconds, monotonic) so they are tested
without sleeping. Neither allocates per event: a bucket is two floats, and the connection
counts only hold keys with at least one open connection, so their size is bounded by the
number of open connections.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from agentcast.security.errors import TooManyConnections

Clock = Callable[[], float]
K = TypeVar("K", bound=Hashable)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full.

    A clock that goes backwards adds nothing (and takes nothing away).
    """

    __slots__ = ("_clock", "_tokens", "_updated", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0")
        if not burst >= 1:
            raise ValueError("burst must be >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._updated = now

    def try_take(self, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if available; ``False`` (and take nothing) otherwise."""
        self._refill()
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False

    def retry_after(self, amount: float = 1.0) -> float:
        """Seconds until ``amount`` tokens will be available (0 if they are now)."""
        self._refill()
        missing = amount - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    @property
    def available(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens


class ConnectionSlot:
    """One counted connection; :meth:`release` it when the connection ends (idempotent)."""

    __slots__ = ("_limits", "subject_key", "tenant")

    def __init__(
        self, limits: ConnectionLimits, tenant: str | None, subject_key: tuple[str, str] | None
    ) -> None:
        self._limits: ConnectionLimits | None = limits
        self.tenant = tenant
        self.subject_key = subject_key

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits._release(self)

    @property
    def released(self) -> bool:
        return self._limits is None


class ConnectionLimits:
    """Counts open connections per tenant and per (tenant, subject); 0 means unlimited.

    :meth:`acquire` raises :class:`~agentcast.security.errors.TooManyConnections` (and counts
    nothing) when either count is at its limit. ``refused`` counts refusals by reason
    (``tenant_limit``, ``subject_limit``) for metrics.
    """

    __slots__ = ("_subjects", "_tenants", "per_subject", "per_tenant", "refused")

    def __init__(self, per_tenant: int = 0, per_subject: int = 0) -> None:
        if per_tenant < 0 or per_subject < 0:
            raise ValueError("limits must be >= 0")
        self.per_tenant = per_tenant
        self.per_subject = per_subject
        self._tenants: dict[str, int] = {}
        self._subjects: dict[tuple[str, str], int] = {}
        self.refused: dict[str, int] = {"tenant_limit": 0, "subject_limit": 0}

    def acquire(self, tenant: str | None, subject: str | None) -> ConnectionSlot:
        """Count one connection of ``tenant`` (``None``: not counted per tenant) and of
        ``subject`` within it (``None``: not counted per subject)."""
        subject_key = (tenant or "", subject) if subject is not None else None
        if tenant is not None and 0 < self.per_tenant <= self._tenants.get(tenant, 0):
            self.refused["tenant_limit"] += 1
            raise TooManyConnections(
                f"tenant {tenant!r} has reached its limit of {self.per_tenant} connections",
                reason="tenant_limit",
            )
        if subject_key is not None and 0 < self.per_subject <= self._subjects.get(subject_key, 0):
            self.refused["subject_limit"] += 1
            raise TooManyConnections(
                f"subject {subject!r} has reached its limit of {self.per_subject} connections",
                reason="subject_limit",
            )
        if tenant is not None:
            self._tenants[tenant] = self._tenants.get(tenant, 0) + 1
        if subject_key is not None:
            self._subjects[subject_key] = self._subjects.get(subject_key, 0) + 1
        return ConnectionSlot(self, tenant, subject_key)

    def _release(self, slot: ConnectionSlot) -> None:
        if slot.tenant is not None:
            _decrement(self._tenants, slot.tenant)
        if slot.subject_key is not None:
            _decrement(self._subjects, slot.subject_key)

    def tenant_count(self, tenant: str) -> int:
        return self._tenants.get(tenant, 0)

    def subject_count(self, tenant: str, subject: str) -> int:
        return self._subjects.get((tenant, subject), 0)

    @property
    def tracked(self) -> int:
        """Distinct tenants plus subjects held in memory (0 when nothing is open)."""
        return len(self._tenants) + len(self._subjects)


def _decrement(counts: dict[K, int], key: K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
