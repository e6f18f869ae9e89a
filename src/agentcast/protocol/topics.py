"""Topic names and patterns: validation and matching (pure functions).

A topic is 1..16 dot-separated segments (<= 255 characters); a segment is 1..64 characters of
``A-Z a-z 0-9 - _ : @ ~ =``. The first segment is the tenant. A pattern may also use ``*`` for
exactly one segment and ``>`` (last segment only) for one or more remaining segments.
"""

from __future__ import annotations

import re

from agentcast.errors import InvalidTopic

MAX_TOPIC_LENGTH = 255
MAX_SEGMENTS = 16
_SEGMENT = r"[A-Za-z0-9\-_:@~=]{1,64}"
_TOPIC_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT}){{0,{MAX_SEGMENTS - 1}}}")
_PATTERN_SEGMENT_RE = re.compile(rf"{_SEGMENT}|\*|>")


def is_pattern(name: str) -> bool:
    """Whether ``name`` contains a wildcard segment (it is not checked for validity)."""
    return "*" in name or ">" in name


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is a valid exact topic name, else raise :class:`InvalidTopic`."""
    if not isinstance(topic, str):
        raise InvalidTopic("topic must be a string")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"topic is longer than {MAX_TOPIC_LENGTH} characters")
    if _TOPIC_RE.fullmatch(topic) is None:
        raise InvalidTopic(
            f"invalid topic {topic[:80]!r}: use 1-{MAX_SEGMENTS} dot-separated segments "
            "of A-Z a-z 0-9 - _ : @ ~ ="
        )
    return topic


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid topic or wildcard pattern, else raise."""
    if not isinstance(pattern, str):
        raise InvalidTopic("topic must be a string")
    if len(pattern) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"topic is longer than {MAX_TOPIC_LENGTH} characters")
    segments = pattern.split(".")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidTopic(f"topic has more than {MAX_SEGMENTS} segments")
    for index, segment in enumerate(segments):
        if _PATTERN_SEGMENT_RE.fullmatch(segment) is None:
            raise InvalidTopic(
                f"invalid segment {segment[:80]!r} in {pattern[:80]!r}: a wildcard must be "
                "a whole segment"
            )
        if segment == ">" and index != len(segments) - 1:
            raise InvalidTopic("'>' may only be the last segment")
    return pattern


def tenant_of(topic: str) -> str:
    """The tenant (first segment) of a topic or pattern."""
    return topic.split(".", 1)[0]


def matches(pattern: str, topic: str) -> bool:
    """Whether exact ``topic`` matches ``pattern`` (both assumed valid)."""
    if not is_pattern(pattern):
        return pattern == topic
    p_segments = pattern.split(".")
    t_segments = topic.split(".")
    for index, p in enumerate(p_segments):
        if p == ">":
            return len(t_segments) > index
        if index >= len(t_segments):
            return False
        if p != "*" and p != t_segments[index]:
            return False
    return len(p_segments) == len(t_segments)
