"""The invariant checker: pure functions over a recorded :class:`History` (no I/O).

A scenario records what its clients saw and hands the history to :func:`check`, which
returns one :class:`Verdict` per invariant asked for. The invariants:

``no_acked_loss``
    Every publish the node acknowledged on a topic reached every subscriber that is
    required to see that topic in full (:attr:`History.required`).
``no_duplicate``
    No subscriber received the same event (idempotency key) twice on a topic, counted
    after the SDK's dedupe, i.e. what the application sees.
``order``
    Each subscriber received each topic in stream order: within an epoch the ``seq`` grows
    strictly, the epoch never changes mid-run, an event arrives at the position its
    publisher was acknowledged with, and nothing arrives at or before the position the
    subscriber subscribed ``since``.
``memory_bounded``
    The node's resident memory never rose more than :attr:`Limits.memory_allowance` above
    its peak in the ``baseline`` phase.
``fds_bounded``
    The node's open file descriptors at the last sample are at most
    :attr:`Limits.fd_allowance` above the peak of the ``baseline`` phase.
``latency``
    The p99 delivery latency of the ``fault`` phase is at most :attr:`Limits.latency_factor`
    times that of the ``baseline`` phase, the baseline taken as at least
    :attr:`Limits.latency_floor` (a loopback p99 of a few hundred microseconds would make
    any factor meaningless on a shared machine).

An invariant with no data to judge (no memory sample, no latency sample in a phase) fails:
a scenario that asks for a check must record what it needs.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

BASELINE = "baseline"
FAULT = "fault"
MIB = 1024 * 1024
DETAIL_ITEMS = 5  # at most this many example keys in a detail message

INVARIANTS = (
    "no_acked_loss",
    "no_duplicate",
    "order",
    "memory_bounded",
    "fds_bounded",
    "latency",
)


@dataclass(frozen=True, slots=True)
class Ack:
    """A publish the node acknowledged: its idempotency ``key`` and stream position."""

    topic: str
    key: str
    seq: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """One event as a subscriber's application received it (after SDK dedupe).

    ``latency`` is seconds from publish to receipt (``None`` when not measured) and
    ``phase`` the scenario phase current at receipt.
    """

    topic: str
    key: str
    seq: int
    epoch: str
    latency: float | None = None
    phase: str = BASELINE


@dataclass(frozen=True, slots=True)
class Sample:
    """The node's resident memory (bytes) and open fds (``-1``: unknown) at one instant."""

    phase: str
    rss: int
    fds: int = -1


@dataclass(slots=True)
class History:
    """Everything a scenario recorded.

    ``received`` maps each subscriber's name to its receipts in arrival order;
    ``required`` maps a subscriber's name to the topics it must receive in full (a
    subscriber absent from it is still checked for duplicates and order); ``since`` maps a
    subscriber's name to the ``seq`` it subscribed after, per topic (nothing at or before it
    may arrive).
    """

    acked: list[Ack] = field(default_factory=list)
    received: dict[str, list[Receipt]] = field(default_factory=dict)
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    since: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds the checker applies (documented in docs/chaos.md)."""

    memory_allowance: int = 64 * MIB
    fd_allowance: int = 16
    latency_factor: float = 5.0
    latency_floor: float = 0.025


@dataclass(frozen=True, slots=True)
class Verdict:
    """One invariant's outcome; ``detail`` says what was measured or what broke."""

    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}

    def line(self) -> str:
        """The human verdict line: ``PASS name: detail`` or ``FAIL name: detail``."""
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def check(
    history: History, names: Sequence[str] = INVARIANTS, limits: Limits | None = None
) -> list[Verdict]:
    """One verdict per name in ``names`` (each one of :data:`INVARIANTS`), in that order."""
    limits = limits or Limits()
    checks = {
        "no_acked_loss": lambda: check_no_acked_loss(history),
        "no_duplicate": lambda: check_no_duplicate(history),
        "order": lambda: check_order(history),
        "memory_bounded": lambda: check_memory(history.samples, limits),
        "fds_bounded": lambda: check_fds(history.samples, limits),
        "latency": lambda: check_latency(history, limits),
    }
    unknown = [name for name in names if name not in checks]
    if unknown:
        raise ValueError(f"unknown invariants: {', '.join(unknown)}")
    return [checks[name]() for name in names]


def _examples(items: Iterable[Any]) -> str:
    listed = sorted(items, key=str)
    shown = ", ".join(str(item) for item in listed[:DETAIL_ITEMS])
    more = len(listed) - DETAIL_ITEMS
    return shown + (f" (+{more} more)" if more > 0 else "")


def check_no_acked_loss(history: History) -> Verdict:
    """Every acked key of a required topic is among that subscriber's receipts."""
    acked: dict[str, set[str]] = defaultdict(set)
    for ack in history.acked:
        acked[ack.topic].add(ack.key)
    missing: dict[str, set[str]] = {}
    checked = 0
    for name, topics in history.required.items():
        seen = {(r.topic, r.key) for r in history.received.get(name, [])}
        for topic in topics:
            checked += len(acked[topic])
            lost = {key for key in acked[topic] if (topic, key) not in seen}
            if lost:
                missing[f"{name}/{topic}"] = lost
    if not history.acked:
        return Verdict("no_acked_loss", False, "no acknowledged publish was recorded")
    if missing:
        parts = [
            f"{where} misses {len(keys)} ({_examples(keys)})" for where, keys in missing.items()
        ]
        return Verdict("no_acked_loss", False, "; ".join(parts))
    acked_keys = {(a.topic, a.key) for a in history.acked}
    unacked = sum(
        (r.topic, r.key) not in acked_keys for rs in history.received.values() for r in rs
    )
    extra = f" ({unacked} receipts of publishes never acked)" if unacked else ""
    return Verdict(
        "no_acked_loss",
        True,
        f"{len(history.acked)} acked events, {checked} required deliveries, none missing{extra}",
    )


def check_no_duplicate(history: History) -> Verdict:
    """No subscriber saw one key twice on one topic."""
    dups: dict[str, list[str]] = {}
    total = 0
    for name, receipts in history.received.items():
        total += len(receipts)
        counts = Counter((r.topic, r.key) for r in receipts)
        repeated = [f"{topic}:{key}x{n}" for (topic, key), n in counts.items() if n > 1]
        if repeated:
            dups[name] = repeated
    if dups:
        parts = [f"{name}: {_examples(keys)}" for name, keys in dups.items()]
        return Verdict("no_duplicate", False, "duplicates after SDK dedupe: " + "; ".join(parts))
    return Verdict("no_duplicate", True, f"{total} receipts, no duplicate")


def check_order(history: History) -> Verdict:
    """Per subscriber and topic: one epoch, strictly growing seq, each at its acked position,
    none at or before the subscriber's ``since``."""
    positions = {(a.topic, a.key): (a.epoch, a.seq) for a in history.acked}
    problems: list[str] = []
    for name, receipts in history.received.items():
        last: dict[str, Receipt] = {}
        since = history.since.get(name, {})
        for r in receipts:
            if r.topic in since and r.seq <= since[r.topic]:
                problems.append(f"{name}/{r.topic}: seq {r.seq} ({r.key}) at or before since")
            before = last.get(r.topic)
            if before is not None and before.epoch != r.epoch:
                problems.append(f"{name}/{r.topic}: epoch changed at {r.key}")
            elif before is not None and r.seq <= before.seq:
                problems.append(f"{name}/{r.topic}: seq {r.seq} ({r.key}) after {before.seq}")
            acked = positions.get((r.topic, r.key))
            if acked is not None and acked != (r.epoch, r.seq):
                problems.append(f"{name}/{r.topic}: {r.key} at seq {r.seq}, acked at {acked[1]}")
            last[r.topic] = r
    if problems:
        return Verdict("order", False, f"{len(problems)} breaks: {_examples(problems)}")
    return Verdict("order", True, "every topic in stream order, at its acked positions")


def _baseline(samples: Sequence[Sample], value: str) -> int | None:
    base = [getattr(s, value) for s in samples if s.phase == BASELINE]
    if not base and samples:
        base = [getattr(samples[0], value)]
    return max(base) if base else None


def check_memory(samples: Sequence[Sample], limits: Limits) -> Verdict:
    """Peak RSS over all samples at most ``memory_allowance`` above the baseline peak."""
    base = _baseline(samples, "rss")
    if base is None:
        return Verdict("memory_bounded", False, "no memory sample was recorded")
    peak = max(s.rss for s in samples)
    growth = peak - base
    detail = (
        f"baseline {base / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB "
        f"(+{growth / MIB:.1f} MiB, allowed +{limits.memory_allowance / MIB:.0f} MiB, "
        f"{len(samples)} samples)"
    )
    return Verdict("memory_bounded", growth <= limits.memory_allowance, detail)


def check_fds(samples: Sequence[Sample], limits: Limits) -> Verdict:
    """Open fds at the last sample at most ``fd_allowance`` above the baseline peak."""
    known = [s for s in samples if s.fds >= 0]
    base = _baseline(known, "fds")
    if base is None:
        return Verdict("fds_bounded", False, "no fd sample was recorded")
    final = known[-1].fds
    peak = max(s.fds for s in known)
    detail = f"baseline {base} fds, peak {peak}, final {final} (allowed +{limits.fd_allowance})"
    return Verdict("fds_bounded", final - base <= limits.fd_allowance, detail)


def p99(values: Sequence[float]) -> float:
    """The 99th percentile by nearest rank (``values`` must not be empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def latencies(history: History, phase: str) -> list[float]:
    """Every measured latency of receipts in ``phase``."""
    return [
        r.latency
        for receipts in history.received.values()
        for r in receipts
        if r.phase == phase and r.latency is not None
    ]


def check_latency(history: History, limits: Limits) -> Verdict:
    """p99 of the fault phase within ``latency_factor`` x max(baseline p99, floor)."""
    base, fault = latencies(history, BASELINE), latencies(history, FAULT)
    if not base or not fault:
        return Verdict(
            "latency", False, f"too few samples (baseline {len(base)}, fault {len(fault)})"
        )
    base_p99, fault_p99 = p99(base), p99(fault)
    bound = limits.latency_factor * max(base_p99, limits.latency_floor)
    detail = (
        f"p99 baseline {base_p99 * 1000:.1f} ms ({len(base)} samples), "
        f"fault {fault_p99 * 1000:.1f} ms ({len(fault)}), bound {bound * 1000:.1f} ms"
    )
    return Verdict("latency", fault_p99 <= bound, detail)
