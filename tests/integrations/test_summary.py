"""summarize: JSON-safe and bounded, whatever it is given."""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.integrations.summary import ELLIPSIS, SummaryLimits, summarize, truncate

LIMITS = SummaryLimits(max_text=20, max_items=3, max_depth=2)


class Colour(enum.Enum):
    RED = "red"


class Opaque:
    """A live object: never walked."""

    secret = "do not copy"


class Output:
    raw = "the raw text"


leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=60)
    | st.binary(max_size=8)
    | st.datetimes(timezones=st.just(UTC))
    | st.sampled_from([Colour.RED, Opaque(), Output(), ValueError("boom")])
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=6)
        | st.tuples(inner, inner)
    ),
    max_leaves=30,
)


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def containers_within(value: Any, limit: int) -> bool:
    if isinstance(value, dict):
        return len(value) <= limit + 1 and all(containers_within(v, limit) for v in value.values())
    if isinstance(value, list):
        return len(value) <= limit + 1 and all(containers_within(v, limit) for v in value)
    return True


@given(values)
def test_a_summary_always_encodes_and_respects_its_bounds(value: Any) -> None:
    summary = summarize(value, LIMITS)
    orjson.dumps(summary)  # never raises: JSON-safe
    assert all(len(s) <= max(LIMITS.max_text, 128) for s in strings_in(summary))
    assert containers_within(summary, LIMITS.max_items)


def test_long_text_is_cut_and_marked() -> None:
    assert truncate("x" * 50, 10) == "x" * 9 + ELLIPSIS
    assert truncate("short", 10) == "short"
    assert summarize("y" * 50, LIMITS) == "y" * 19 + ELLIPSIS


def test_containers_are_cut_and_what_was_cut_is_counted() -> None:
    assert summarize(list(range(10)), LIMITS) == [0, 1, 2, f"{ELLIPSIS} 7 more"]
    assert summarize({str(i): i for i in range(5)}, LIMITS) == {"0": 0, "1": 1, "2": 2, ELLIPSIS: 2}
    assert summarize({"a": {"b": {"c": 1}}}, LIMITS) == {"a": {"b": "<dict>"}}


def test_objects_are_named_not_walked() -> None:
    assert summarize(Opaque(), LIMITS) == "<Opaque>"
    assert summarize(Output(), LIMITS) == "the raw text"
    assert summarize(ValueError("boom"), LIMITS) == "ValueError: boom"
    assert summarize(Colour.RED, LIMITS) == "red"
    assert summarize(b"abc", LIMITS) == "<3 bytes>"
    assert summarize(math.inf, LIMITS) == "inf"
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert summarize(moment, LIMITS) == "2026-01-02T03:04:05+00:00"


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SummaryLimits(max_text=0)


def test_integers_beyond_64_bits_become_strings() -> None:
    assert summarize(2**64 - 1, LIMITS) == 2**64 - 1
    assert summarize(-(2**63) - 1, LIMITS) == "-9223372036854775809"
