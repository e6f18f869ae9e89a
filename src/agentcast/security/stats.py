"""Counters of the security layer, read by the metrics collector at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SecurityStats:
    """Refusal counters keyed by a small fixed set of labels (never by tenant or subject,
    so their size is bounded).

    ``auth_failures`` by reason (``expired``, ``signature``, ``audience``, ...),
    ``forbidden`` by operation, ``rate_limited`` by transport (``ws``, ``http``),
    ``connections_refused`` by reason (``origin``, ``origin_missing``, ``node_rate``,
    ``tenant_limit``, ``subject_limit``).
    """

    auth_failures: dict[str, int] = field(default_factory=dict)
    forbidden: dict[str, int] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)
    connections_refused: dict[str, int] = field(default_factory=dict)
    authenticated: int = 0

    @staticmethod
    def count(table: dict[str, int], label: str) -> None:
        table[label] = table.get(label, 0) + 1
