"""Capabilities: pattern containment and tenant isolation, checked against brute force."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentcast.protocol.topics import matches
from agentcast.security.capabilities import (
    CACHE_SIZE,
    Capabilities,
    Operation,
    parse_grants,
    pattern_contains,
    validate_tenant,
)

# Patterns use the literals a and b; the universe of topics adds c (so a '*' is never
# covered by a literal) and goes one segment longer than any pattern (so a '>' is never
# covered by a fixed length).
PATTERN_LITERALS = ("a", "b")
MAX_PATTERN_SEGMENTS = 4
UNIVERSE = [
    ".".join(parts)
    for length in range(1, MAX_PATTERN_SEGMENTS + 2)
    for parts in itertools.product(("a", "b", "c"), repeat=length)
]


@st.composite
def patterns(draw: st.DrawFn) -> str:
    segments = draw(
        st.lists(
            st.sampled_from([*PATTERN_LITERALS, "*"]), min_size=1, max_size=MAX_PATTERN_SEGMENTS
        )
    )
    if len(segments) < MAX_PATTERN_SEGMENTS and draw(st.booleans()):
        segments.append(">")
    elif draw(st.booleans()):
        segments[-1] = ">"
    return ".".join(segments)


def brute_force_contains(grant: str, request: str) -> bool:
    return all(matches(grant, topic) for topic in UNIVERSE if matches(request, topic))


@settings(max_examples=1000)
@given(patterns(), patterns())
def test_containment_agrees_with_brute_force(grant: str, request: str) -> None:
    assert pattern_contains(grant, request) == brute_force_contains(grant, request)


@given(patterns())
def test_every_pattern_contains_itself(pattern: str) -> None:
    assert pattern_contains(pattern, pattern)


@given(patterns(), patterns(), patterns())
def test_containment_is_transitive(a: str, b: str, c: str) -> None:
    if pattern_contains(a, b) and pattern_contains(b, c):
        assert pattern_contains(a, c)


@pytest.mark.parametrize(
    ("grant", "request_", "contained"),
    [
        ("acme.>", "acme.run-1.>", True),
        ("acme.>", "acme.*.chat", True),
        ("acme.*.*", "acme.*.chat", True),
        ("acme.*", "acme.>", False),
        ("acme.>", "acme", False),
        ("acme.>", "acme.>", True),
        ("acme.run-1.>", "acme.>", False),
        ("acme.*.chat", "acme.*.*", False),
        ("acme.>", "*.>", False),
        ("acme.>", ">", False),
        ("acme.*", "acme.x", True),
        ("acme.x", "acme.*", False),
        ("acme.x", "acme.x", True),
        ("*.x", "acme.x", True),
        (">", "acme.run-1.chat", True),
    ],
)
def test_containment_examples(grant: str, request_: str, contained: bool) -> None:
    assert pattern_contains(grant, request_) is contained


tenants = st.sampled_from(["a", "b"])


@given(tenants, patterns(), st.sets(st.sampled_from(list(Operation)), min_size=1))
def test_a_tenant_never_reaches_outside_itself_whatever_its_grants(
    tenant: str, request: str, ops: set[Operation]
) -> None:
    # Grants that would cover everything, if the tenant rule did not come first.
    grants = {">": tuple(ops), "*.>": tuple(ops), "*": tuple(ops)}
    caps = Capabilities(grants, tenant=tenant)
    for op in Operation:
        allowed = caps.allows(op, request)
        if request.split(".")[0] != tenant:
            assert not allowed
        else:
            assert allowed == (op in ops)


@settings(max_examples=500)
@given(tenants, patterns(), patterns(), st.sampled_from(list(Operation)))
def test_allows_is_tenant_check_and_containment(
    tenant: str, grant: str, request: str, op: Operation
) -> None:
    caps = Capabilities({grant: (op,)}, tenant=tenant)
    expected = request.split(".")[0] == tenant and brute_force_contains(grant, request)
    assert caps.allows(op, request) == expected
    other = next(o for o in Operation if o is not op)
    assert not caps.allows(other, request)


@pytest.mark.parametrize("request_", ["*.>", ">", "*", "*.chat", "globex.chat", "acmex.chat"])
def test_wildcard_or_foreign_first_segment_is_refused(request_: str) -> None:
    caps = Capabilities({"acme.>": list(Operation)}, tenant="acme")
    for op in Operation:
        assert not caps.allows(op, request_)


def test_admin_capabilities_may_cross_tenants_but_only_within_grants() -> None:
    caps = Capabilities({"*.audit.>": [Operation.SUBSCRIBE]}, tenant=None)
    assert caps.is_admin
    assert caps.allows(Operation.SUBSCRIBE, "*.audit.>")
    assert caps.allows(Operation.SUBSCRIBE, "globex.audit.x")
    assert not caps.allows(Operation.SUBSCRIBE, ">")
    assert not caps.allows(Operation.PUBLISH, "globex.audit.x")


def test_everything_and_nothing() -> None:
    assert Capabilities.everything().allows(Operation.PUBLISH, "any.topic")
    assert Capabilities.everything().allows(Operation.SUBSCRIBE, ">")
    nothing = Capabilities.nothing("acme")
    assert not any(nothing.allows(op, "acme.x") for op in Operation)


def test_answers_are_cached_in_a_bounded_cache() -> None:
    caps = Capabilities({"acme.>": [Operation.PUBLISH]}, tenant="acme")
    for index in range(CACHE_SIZE * 3):
        assert caps.allows(Operation.PUBLISH, f"acme.t{index}")
        assert len(caps._cache) <= CACHE_SIZE
    assert not caps.allows(Operation.PUBLISH, "globex.t1")
    assert not caps.allows(Operation.PUBLISH, "globex.t1")


def test_grants_round_trip() -> None:
    caps = Capabilities(
        {"acme.a.>": ["subscribe", "publish"], "acme.b": ["history"]}, tenant="acme"
    )
    assert caps.grants() == {"acme.a.>": ["publish", "subscribe"], "acme.b": ["history"]}


def test_parse_grants_validates_and_normalises() -> None:
    grants = parse_grants({"acme.>": ["subscribe", "publish", "publish"]}, tenant="acme")
    assert grants == {"acme.>": (Operation.PUBLISH, Operation.SUBSCRIBE)}
    assert parse_grants({"*.>": ["subscribe"]}, tenant=None) == {"*.>": (Operation.SUBSCRIBE,)}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["acme.>"], "must be a table"),
        ({"acme.>": "publish"}, "must be a list"),
        ({"acme.>": ["fly"]}, "unknown operation"),
        ({"acme.run-*": ["publish"]}, "wildcard must be a whole segment"),
        ({"acme.>.x": ["publish"]}, "caps pattern"),
        ({"globex.>": ["publish"]}, "outside tenant"),
        ({">": ["publish"]}, "outside tenant"),
        ({f"acme.p{i}": ["publish"] for i in range(300)}, "more than"),
    ],
)
def test_parse_grants_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_grants(value, tenant="acme")


@pytest.mark.parametrize("tenant", ["", "a.b", "*", ">", "with space", 3, None, "x" * 65])
def test_invalid_tenants(tenant: object) -> None:
    with pytest.raises(ValueError):
        validate_tenant(tenant)
