"""Topic capabilities: which operations a principal may perform on which topics.

A grant maps a topic pattern to operations (``publish``, ``subscribe``, ``presence``,
``history``). A request for an exact topic or a pattern is allowed when it is *contained* in
a pattern granted for that operation: every topic the request can match is matched by the
grant. ``acme.run-1.>`` is within ``acme.>``; ``acme.*.chat`` is within ``acme.>`` and
``acme.*.*``; ``acme.>`` is not within ``acme.*``.

Tenant isolation comes first and does not depend on the grants: for a tenant-scoped
principal every requested topic or pattern must start with the tenant's own segment, so a
request whose first segment is ``*`` or ``>`` (or another tenant) is always refused.
Only an admin principal (``tenant=None``) may reach across tenants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from agentcast.errors import InvalidTopic
from agentcast.protocol.topics import tenant_of, validate_pattern, validate_topic

CACHE_SIZE = 1024


class Operation(StrEnum):
    """An operation a capability grants on a topic pattern."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    PRESENCE = "presence"
    HISTORY = "history"


Grants = dict[str, tuple[Operation, ...]]
"""Normalised grants: pattern -> operations (no duplicates, in :class:`Operation` order)."""

MAX_GRANTS = 256


def validate_tenant(value: object) -> str:
    """Return ``value`` if it is a valid tenant (one literal topic segment), else raise
    :class:`ValueError`."""
    if not isinstance(value, str) or "." in value:
        raise ValueError("a tenant must be one topic segment (a string without '.')")
    try:
        return validate_topic(value)
    except InvalidTopic as exc:
        raise ValueError(f"invalid tenant: {exc.message}") from None


def parse_grants(value: object, *, tenant: str | None) -> Grants:
    """Validate ``{pattern: [operation, ...]}`` and return it normalised.

    Raises :class:`ValueError` (with a message naming the bad entry) for a non-mapping, an
    invalid pattern, an unknown operation, more than :data:`MAX_GRANTS` patterns, or, when
    ``tenant`` is given, a pattern whose first segment is not that tenant (such a grant
    could never apply, so it is a mistake worth reporting).
    """
    if not isinstance(value, Mapping):
        raise ValueError("caps must be a table of topic pattern -> list of operations")
    if len(value) > MAX_GRANTS:
        raise ValueError(f"caps has more than {MAX_GRANTS} patterns")
    grants: Grants = {}
    for pattern, ops in value.items():
        try:
            validate_pattern(pattern)
        except InvalidTopic as exc:
            raise ValueError(f"caps pattern {str(pattern)[:80]!r}: {exc.message}") from None
        if tenant is not None and tenant_of(pattern) != tenant:
            raise ValueError(f"caps pattern {pattern!r} is outside tenant {tenant!r}")
        if isinstance(ops, str) or not isinstance(ops, list | tuple):
            raise ValueError(f"caps for {pattern!r} must be a list of operations")
        wanted: set[Operation] = set()
        for op in ops:
            try:
                wanted.add(Operation(op))
            except ValueError:
                allowed = ", ".join(o.value for o in Operation)
                raise ValueError(
                    f"unknown operation {str(op)[:40]!r} for {pattern!r} (use {allowed})"
                ) from None
        grants[pattern] = tuple(op for op in Operation if op in wanted)
    return grants


def pattern_contains(grant: str, request: str) -> bool:
    """Whether every topic matched by ``request`` is matched by ``grant``.

    Both are valid topics or patterns (``*`` one segment, ``>`` one or more remaining
    segments, last only). An exact ``request`` is contained exactly when ``grant`` matches
    it.
    """
    granted = grant.split(".")
    requested = request.split(".")
    for index, g in enumerate(granted):
        if g == ">":
            return len(requested) > index
        if index >= len(requested):
            return False
        r = requested[index]
        if r == ">":
            # The request spans any number of further segments; a grant without '>' from
            # here on has a fixed length, so it cannot cover them all.
            return False
        if g != "*" and g != r:
            return False
    return len(requested) == len(granted)


class Capabilities:
    """An immutable set of grants, scoped to one tenant (or unscoped for an admin).

    ``allows`` assumes its argument passed :func:`~agentcast.protocol.topics.validate_pattern`
    (the command decoder guarantees it). Answers are memoised in a small bounded cache, so
    repeated publishes to the same topic cost one dictionary lookup.
    """

    __slots__ = ("_cache", "_grants", "_unrestricted", "tenant")

    def __init__(
        self,
        grants: Mapping[str, Iterable[Operation | str]],
        *,
        tenant: str | None,
        unrestricted: bool = False,
    ) -> None:
        by_op: dict[Operation, list[str]] = {op: [] for op in Operation}
        for pattern, ops in grants.items():
            for op in ops:
                patterns = by_op[Operation(op)]
                if pattern not in patterns:
                    patterns.append(pattern)
        self._grants: dict[Operation, tuple[str, ...]] = {
            op: tuple(patterns) for op, patterns in by_op.items()
        }
        self.tenant = tenant
        self._unrestricted = unrestricted
        self._cache: dict[tuple[Operation, str], bool] = {}

    @classmethod
    def everything(cls) -> Capabilities:
        """Every operation on every topic of every tenant (authentication off)."""
        return cls({}, tenant=None, unrestricted=True)

    @classmethod
    def nothing(cls, tenant: str) -> Capabilities:
        """No operation at all, for a principal of ``tenant`` that has no grant."""
        return cls({}, tenant=tenant)

    @property
    def is_admin(self) -> bool:
        """Whether requests may start with any tenant (or a wildcard)."""
        return self.tenant is None

    def grants(self) -> dict[str, list[str]]:
        """The grants as ``{pattern: [operations]}`` (sorted; for replies and logs)."""
        out: dict[str, list[str]] = {}
        for op in Operation:
            for pattern in self._grants[op]:
                out.setdefault(pattern, []).append(op.value)
        if self._unrestricted:
            out[">"] = [op.value for op in Operation]
        return dict(sorted(out.items()))

    def allows(self, op: Operation, topic_or_pattern: str) -> bool:
        """Whether ``op`` on ``topic_or_pattern`` is within tenant and grants."""
        key = (op, topic_or_pattern)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        allowed = self._decide(op, topic_or_pattern)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = allowed
        return allowed

    def _decide(self, op: Operation, request: str) -> bool:
        if self._unrestricted:
            return True
        if self.tenant is not None and tenant_of(request) != self.tenant:
            return False
        return any(pattern_contains(grant, request) for grant in self._grants[op])

    def __repr__(self) -> str:
        scope = "admin" if self.tenant is None else f"tenant={self.tenant!r}"
        return f"Capabilities({scope}, {self.grants()!r})"
