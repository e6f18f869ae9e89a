from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcast.errors import InvalidTopic
from agentcast.protocol.topics import matches, validate_pattern, validate_topic

segment = st.sampled_from(["acme", "run-1", "agent", "chat", "x", "a:b", "u@h", "k=v"])
topics = st.lists(segment, min_size=1, max_size=6).map(".".join)
pattern_segment = st.one_of(segment, st.just("*"))


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(pattern_segment, min_size=1, max_size=6))
    if draw(st.booleans()):
        parts.append(">")
    return ".".join(parts)


def reference_match(pattern: str, topic: str) -> bool:
    p, t = pattern.split("."), topic.split(".")
    if p[-1] == ">":
        head = p[:-1]
        return len(t) > len(head) and all(a in ("*", b) for a, b in zip(head, t, strict=False))
    return len(p) == len(t) and all(a in ("*", b) for a, b in zip(p, t, strict=True))


@given(patterns(), topics)
def test_matches_agrees_with_reference(pattern: str, topic: str) -> None:
    assert matches(pattern, topic) == reference_match(pattern, topic)


@given(topics)
def test_a_topic_matches_itself_and_its_wildcards(topic: str) -> None:
    assert matches(topic, topic)
    segments = topic.split(".")
    assert matches(".".join(["*"] * len(segments)), topic)
    assert matches(segments[0] + ".>", topic) == (len(segments) > 1)


@pytest.mark.parametrize(
    "bad",
    ["", ".", "a..b", "a.", ".a", "a b", "a/b", "a.*", "a.>", "é", "x" * 65, "a." * 16 + "a", 7],
)
def test_invalid_topics_are_refused(bad: object) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic(bad)


@pytest.mark.parametrize("bad", ["a.>.b", "a.b*", "run-*", ">x", "a..>", "", "*.*.", None])
def test_invalid_patterns_are_refused(bad: object) -> None:
    with pytest.raises(InvalidTopic):
        validate_pattern(bad)


@pytest.mark.parametrize("good", ["acme", "acme.*", "acme.>", "*.run.>", "acme.run-42.agent.x"])
def test_valid_patterns(good: str) -> None:
    assert validate_pattern(good) == good


@given(st.text(max_size=300))
def test_validation_never_crashes(text: str) -> None:
    for validate in (validate_topic, validate_pattern):
        try:
            assert validate(text) == text
        except InvalidTopic as exc:
            assert exc.code == "invalid_topic"
