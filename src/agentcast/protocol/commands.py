"""Client commands of protocol v1: decoding and validation (sans-I/O).

:func:`decode_command` turns one text frame into a typed command or raises a
:class:`~agentcast.errors.ProtocolError` whose ``command_id`` is the frame's ``id`` when it
could be read, so the caller can address the error reply.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from agentcast.errors import (
    BadJson,
    InvalidTopic,
    MissingField,
    ProtocolError,
    UnknownCommand,
    Unsupported,
    UnsupportedProtocol,
    WildcardPublish,
)
from agentcast.protocol.topics import is_pattern, validate_pattern, validate_topic

CommandId = int | str | None

MAX_ID_LENGTH = 64
MAX_NAME_LENGTH = 128
MAX_HEADERS = 32
MAX_HEADER_NAME = 64
MAX_HEADER_VALUE = 1024
PROTOCOL_VERSION = 1
MAX_TOKEN_LENGTH = 16384


class Policy(StrEnum):
    """What happens when a subscriber's outbound queue is full."""

    DISCONNECT = "disconnect"
    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"
    LATEST_PER_KEY = "latest_per_key"


@dataclass(slots=True, frozen=True)
class Position:
    """A stream position: the last event a client has seen of a topic."""

    epoch: str
    seq: int


@dataclass(slots=True, frozen=True)
class Hello:
    id: CommandId
    client: str | None = None
    token: str | None = None
    resume: dict[str, Position] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Subscribe:
    """``since``, ``last`` and ``since_time`` ask for history (durable exact topics only);
    at most one of them is set."""

    id: CommandId
    topic: str
    policy: Policy | None = None
    key_header: str = "key"
    since: Position | None = None
    last: int | None = None
    since_time: str | None = None
    group: str | None = None
    ack_timeout: float | None = None
    max_deliver: int | None = None
    max_in_flight: int | None = None
    dead_letter_topic: str | None = None

    @property
    def wants_history(self) -> bool:
        return self.since is not None or self.last is not None or self.since_time is not None


@dataclass(slots=True, frozen=True)
class Unsubscribe:
    id: CommandId
    topic: str
    group: str | None = None


@dataclass(slots=True, frozen=True)
class Ack:
    """A group member finished ``seq`` of ``topic``."""

    id: CommandId
    topic: str
    group: str
    seq: int


@dataclass(slots=True, frozen=True)
class Nack:
    """A group member gives ``seq`` back, to be redelivered after ``delay`` seconds."""

    id: CommandId
    topic: str
    group: str
    seq: int
    delay: float = 0.0
    reason: str = ""


@dataclass(slots=True)
class Publish:
    """A publish command. Decoded once per publish on the hot path, so not frozen (a frozen
    dataclass costs several times more to construct); nobody assigns its fields once built."""

    id: CommandId
    topic: str
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    ack: bool = True
    idempotency_key: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    lamport: int = 0


@dataclass(slots=True, frozen=True)
class Ping:
    id: CommandId


@dataclass(slots=True, frozen=True)
class Refresh:
    """A fresh connection token for the same subject and tenant, before the old expires."""

    id: CommandId
    token: str


@dataclass(slots=True, frozen=True)
class PresenceQuery:
    """Who is connected to ``session`` (``<tenant>.<name>``), cluster-wide."""

    id: CommandId
    session: str


Command = Hello | Subscribe | Unsubscribe | Publish | Ping | Ack | Nack | Refresh | PresenceQuery


def _command_id(obj: dict[str, Any]) -> CommandId:
    value = obj.get("id")
    if value is None:
        return None
    if value.__class__ is int:  # the common case, checked without building a type union
        return value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ProtocolError("'id' must be an integer or a string")
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise ProtocolError(f"'id' is longer than {MAX_ID_LENGTH} characters")
    return value


def _opt_str(obj: dict[str, Any], name: str, limit: int = MAX_NAME_LENGTH) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"'{name}' must be a string")
    if len(value) > limit:
        raise ProtocolError(f"'{name}' is longer than {limit} characters")
    if "\x00" in value:
        raise ProtocolError(f"'{name}' must not contain NUL characters")
    return value


def _required(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise MissingField(f"'{name}' is required for '{obj.get('cmd')}'")
    return obj[name]


def parse_headers(value: Any) -> dict[str, str]:
    """Validate a headers object (string to string, bounded); ``None`` means no headers."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("'headers' must be an object of strings")
    if len(value) > MAX_HEADERS:
        raise ProtocolError(f"at most {MAX_HEADERS} headers")
    for name, item in value.items():
        if not isinstance(item, str):
            raise ProtocolError(f"header {name[:64]!r} must be a string")
        if not name or len(name) > MAX_HEADER_NAME:
            raise ProtocolError(f"header names are 1-{MAX_HEADER_NAME} characters")
        if len(item) > MAX_HEADER_VALUE:
            raise ProtocolError(f"header {name!r} is longer than {MAX_HEADER_VALUE} characters")
        if "\x00" in name or "\x00" in item:
            raise ProtocolError("header names and values must not contain NUL characters")
    return value


MAX_RESUME_TOPICS = 256


def parse_position(value: Any, name: str) -> Position:
    """Validate ``{"epoch": str, "seq": int >= 0}``."""
    if not isinstance(value, dict):
        raise ProtocolError(f"'{name}' must be an object with 'epoch' and 'seq'")
    epoch = value.get("epoch")
    seq = value.get("seq")
    if not isinstance(epoch, str) or len(epoch) > MAX_NAME_LENGTH:
        raise ProtocolError(f"'{name}.epoch' must be a string")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ProtocolError(f"'{name}.seq' must be a non-negative integer")
    return Position(epoch, seq)


def _hello(cid: CommandId, obj: dict[str, Any]) -> Hello:
    version = obj.get("protocol", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise UnsupportedProtocol(f"protocol {version!r} is not supported; this server speaks 1")
    raw_resume = obj.get("resume") or {}
    if not isinstance(raw_resume, dict):
        raise ProtocolError("'resume' must be an object of topic -> position")
    if len(raw_resume) > MAX_RESUME_TOPICS:
        raise ProtocolError(f"'resume' holds at most {MAX_RESUME_TOPICS} topics")
    resume = {
        validate_topic(topic): parse_position(position, f"resume.{topic}")
        for topic, position in raw_resume.items()
    }
    return Hello(cid, _opt_str(obj, "client"), _opt_str(obj, "token", MAX_TOKEN_LENGTH), resume)


def _subscribe(cid: CommandId, obj: dict[str, Any]) -> Subscribe:
    topic = validate_pattern(_required(obj, "topic"))
    if obj.get("group") is not None:
        return _subscribe_group(cid, topic, obj)
    since = None if obj.get("since") is None else parse_position(obj["since"], "since")
    last = obj.get("last")
    if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 1):
        raise ProtocolError("'last' must be a positive integer")
    since_time = _opt_str(obj, "since_time", 64)
    if sum(x is not None for x in (since, last, since_time)) > 1:
        raise ProtocolError("use at most one of 'since', 'last' and 'since_time'")
    if (since or last or since_time) and is_pattern(topic):
        raise Unsupported("history and resume need an exact topic, not a pattern")
    policy_name = obj.get("policy")
    policy: Policy | None = None
    if policy_name is not None:
        try:
            policy = Policy(policy_name)
        except ValueError:
            names = ", ".join(p.value for p in Policy)
            raise ProtocolError(f"'policy' must be one of {names}") from None
    key_header = _opt_str(obj, "key_header", MAX_HEADER_NAME) or "key"
    return Subscribe(cid, topic, policy, key_header, since, last, since_time)


_GROUP_RE = re.compile(r"[A-Za-z0-9\-_:@~=]{1,64}")
MAX_ACK_TIMEOUT = 86_400.0


def _group_name(value: Any) -> str:
    if not isinstance(value, str) or _GROUP_RE.fullmatch(value) is None:
        raise ProtocolError("'group' must be 1-64 characters of A-Z a-z 0-9 - _ : @ ~ =")
    return value


def _opt_number(obj: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ProtocolError(f"'{name}' must be a number from {low:g} to {high:g}")
    return float(value)


def _subscribe_group(cid: CommandId, topic: str, obj: dict[str, Any]) -> Subscribe:
    if is_pattern(topic):
        raise Unsupported("consumer groups need an exact topic, not a pattern")
    for field_name in ("since", "last", "since_time", "policy"):
        if obj.get(field_name) is not None:
            raise ProtocolError(f"'{field_name}' does not apply to a group subscription")
    max_deliver = _opt_number(obj, "max_deliver", 1, 1000)
    max_in_flight = _opt_number(obj, "max_in_flight", 1, 10_000)
    dead_letter = obj.get("dead_letter_topic")
    if dead_letter is not None:
        validate_topic(dead_letter)
    return Subscribe(
        cid,
        topic,
        key_header=_opt_str(obj, "key_header", MAX_HEADER_NAME) or "key",
        group=_group_name(obj["group"]),
        ack_timeout=_opt_number(obj, "ack_timeout", 0.1, MAX_ACK_TIMEOUT),
        max_deliver=None if max_deliver is None else int(max_deliver),
        max_in_flight=None if max_in_flight is None else int(max_in_flight),
        dead_letter_topic=dead_letter,
    )


def _unsubscribe(cid: CommandId, obj: dict[str, Any]) -> Unsubscribe:
    group = obj.get("group")
    return Unsubscribe(
        cid,
        validate_pattern(_required(obj, "topic")),
        None if group is None else _group_name(group),
    )


def _seq(obj: dict[str, Any]) -> int:
    seq = _required(obj, "seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ProtocolError("'seq' must be a positive integer")
    return seq


def _refresh(cid: CommandId, obj: dict[str, Any]) -> Refresh:
    token = _required(obj, "token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise ProtocolError(f"'token' must be a string of 1-{MAX_TOKEN_LENGTH} characters")
    return Refresh(cid, token)


def _ack(cid: CommandId, obj: dict[str, Any]) -> Ack:
    topic = validate_topic(_required(obj, "topic"))
    return Ack(cid, topic, _group_name(_required(obj, "group")), _seq(obj))


def _nack(cid: CommandId, obj: dict[str, Any]) -> Nack:
    topic = validate_topic(_required(obj, "topic"))
    delay = _opt_number(obj, "delay", 0, MAX_ACK_TIMEOUT) or 0.0
    reason = _opt_str(obj, "reason", MAX_HEADER_VALUE) or ""
    return Nack(cid, topic, _group_name(_required(obj, "group")), _seq(obj), delay, reason)


_PUBLISH_TOPICS: dict[str, None] = {}
"""Exact topics that passed :func:`validate_topic`, so a topic published to again is only
looked up (validation is a pure function of the name); cleared when it holds
``MAX_PUBLISH_TOPICS``."""
MAX_PUBLISH_TOPICS = 65536


def _publish_topic(obj: dict[str, Any]) -> str:
    topic = obj.get("topic")
    if topic.__class__ is str and topic in _PUBLISH_TOPICS:
        return topic
    topic = _required(obj, "topic")
    if isinstance(topic, str) and is_pattern(topic):
        raise WildcardPublish(f"cannot publish to the pattern {topic[:80]!r}")
    validate_topic(topic)
    if len(_PUBLISH_TOPICS) >= MAX_PUBLISH_TOPICS:
        _PUBLISH_TOPICS.clear()
    _PUBLISH_TOPICS[topic] = None
    return topic  # type: ignore[no-any-return]


def parse_publish_fields(cid: CommandId, obj: dict[str, Any]) -> Publish:
    """Validate the fields of a publish (shared by the WebSocket and HTTP APIs)."""
    topic = _publish_topic(obj)
    get = obj.get
    ack = get("ack", True)
    if ack is not True and ack is not False:
        raise ProtocolError("'ack' must be a boolean")
    lamport = get("lamport", 0)
    if lamport is None:
        lamport = 0
    elif isinstance(lamport, bool) or not isinstance(lamport, int) or lamport < 0:
        raise ProtocolError("'lamport' must be a non-negative integer")
    headers = get("headers")
    return Publish(
        cid,
        topic,
        get("payload"),
        {} if headers is None else parse_headers(headers),
        ack,
        None if get("idempotency_key") is None else _opt_str(obj, "idempotency_key"),
        None if get("correlation_id") is None else _opt_str(obj, "correlation_id"),
        None if get("causation_id") is None else _opt_str(obj, "causation_id"),
        lamport,
    )


def _ping(cid: CommandId, obj: dict[str, Any]) -> Ping:
    return Ping(cid)


def _presence(cid: CommandId, obj: dict[str, Any]) -> PresenceQuery:
    session = validate_topic(_required(obj, "session"))
    if session.count(".") != 1:
        raise InvalidTopic("'session' is two segments: '<tenant>.<session>'")
    return PresenceQuery(cid, session)


_PARSERS: dict[str, Callable[[CommandId, dict[str, Any]], Command]] = {
    "hello": _hello,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "publish": parse_publish_fields,
    "ping": _ping,
    "ack": _ack,
    "nack": _nack,
    "refresh": _refresh,
    "presence": _presence,
}


def decode_command(data: bytes | str) -> Command:
    """Decode and validate one command frame.

    Raises :class:`ProtocolError` (with ``command_id`` set when known) for bad JSON, a
    non-object, an unknown ``cmd``, a missing field or a bad value.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadJson(f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadJson("a command must be a JSON object")
    cid: CommandId = None
    try:
        cid = _command_id(obj)
        name = obj.get("cmd")
        if name is None:
            raise MissingField("'cmd' is required")
        parser = _PARSERS.get(name) if isinstance(name, str) else None
        if parser is None:
            raise UnknownCommand(f"unknown command {str(name)[:64]!r}")
        return parser(cid, obj)
    except ProtocolError as exc:
        exc.command_id = cid
        raise
