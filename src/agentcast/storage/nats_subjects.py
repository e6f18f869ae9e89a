"""Subjects and messages of the NATS history store.

A topic's subject token (:func:`subject_token`, one-to-one with the topic), the headers every
history message carries, the body of an event message, and :class:`HistoryMsg`, a message of
a topic's subject as the store reads it. See
:class:`~agentcast.storage.nats_store.NatsHistoryStore` for how the store uses them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import orjson
from nats.js.api import RawStreamMsg

from agentcast.storage.base import EventDraft, StoredEvent

STREAM_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,200}")
SUBJECT_PREFIX: Final = re.compile(r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){0,7}")
_PLAIN_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPED: Final = re.compile(r"=([0-9A-F]{2})")

H_EPOCH: Final = "Ac-Epoch"
H_SEQ: Final = "Ac-Seq"
H_TIME: Final = "Ac-Time"
H_MARKER: Final = "Ac-Marker"
H_EXPECTED: Final = "Nats-Expected-Last-Subject-Sequence"
H_MSG_ID: Final = "Nats-Msg-Id"


def subject_token(topic: str) -> str:
    """The subject tokens of ``topic``: one token per dot-separated segment.

    Topic segments may hold ``: @ ~ =`` (and a store accepts any string), while the store
    keeps subject tokens to ``A-Z a-z 0-9 - _`` so that every NATS tool and client handles
    them: other bytes of a segment's UTF-8 are written ``=HH`` (upper-case hex) and an empty
    segment is the token ``=``. The mapping is one-to-one (see :func:`topic_of_token`)."""
    return ".".join(_escape_segment(segment) for segment in topic.split("."))


def topic_of_token(tokens: str) -> str:
    """The topic whose :func:`subject_token` is ``tokens``."""
    return ".".join(_unescape_segment(token) for token in tokens.split("."))


def _escape_segment(segment: str) -> str:
    if not segment:
        return "="
    if _PLAIN_TOKEN.fullmatch(segment):
        return segment
    out = []
    for char in segment:
        if _PLAIN_TOKEN.fullmatch(char):
            out.append(char)
        else:
            out.extend(f"={byte:02X}" for byte in char.encode())
    return "".join(out)


def _unescape_segment(token: str) -> str:
    if token == "=":
        return ""
    if "=" not in token:
        return token
    raw = bytearray()
    pos = 0
    for match in _ESCAPED.finditer(token):
        raw += token[pos : match.start()].encode()
        raw.append(int(match.group(1), 16))
        pos = match.end()
    raw += token[pos:].encode()
    return raw.decode()


def digest(*parts: object) -> str:
    """A short stable identifier of ``parts`` (message ids, idempotency-record names)."""
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


def encode_event(draft: EventDraft) -> bytes:
    """Message body: the envelope fields as one JSON line, then the payload bytes as given."""
    fields = [
        draft.id,
        draft.time,
        draft.source,
        draft.headers,
        draft.correlation_id,
        draft.causation_id,
        draft.lamport,
    ]
    return orjson.dumps(fields) + b"\n" + draft.payload


@dataclass(frozen=True, slots=True)
class HistoryMsg:
    """A message of a topic's subject as the store reads it: an event, or a marker whose
    ``seq`` is the topic's last seq when it was written (0 for a reset)."""

    stream_seq: int
    epoch: str
    seq: int
    marker: bool
    time_us: int = 0
    body: bytes | None = None

    @classmethod
    def parse(
        cls, stream_seq: int, headers: Mapping[str, str] | None, body: bytes | None
    ) -> HistoryMsg:
        if headers is None or H_EPOCH not in headers or H_SEQ not in headers:
            raise ValueError(f"message {stream_seq} is not a history message")
        return cls(
            stream_seq,
            headers[H_EPOCH],
            int(headers[H_SEQ]),
            H_MARKER in headers,
            int(headers.get(H_TIME, "0")),
            body,
        )

    def key(self, epoch: str) -> int:
        """Order of the message within ``epoch``'s history: events ``2 * seq``, markers
        ``2 * seq + 1`` (just after the event they follow), other epochs' messages -1.
        Keys grow with the stream sequence along a subject."""
        if self.epoch != epoch:
            return -1
        return 2 * self.seq + (1 if self.marker else 0)

    def event(self, topic: str) -> StoredEvent:
        if self.body is None or self.marker:
            raise ValueError(f"message {self.stream_seq} carries no event")
        line, _, payload = self.body.partition(b"\n")
        id_, time_, source, headers, correlation_id, causation_id, lamport = orjson.loads(line)
        return StoredEvent(
            id_,
            topic,
            self.epoch,
            self.seq,
            time_,
            source,
            payload,
            headers,
            correlation_id,
            causation_id,
            lamport,
        )


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An idempotency key's record: the position it names and when it expires (store clock)."""

    epoch: str
    seq: int
    expires: float


def from_raw(raw: RawStreamMsg) -> HistoryMsg:
    """The history message a direct get returned."""
    if raw.seq is None:
        raise ValueError("a direct get answered without a stream sequence")
    return HistoryMsg.parse(raw.seq, raw.headers, raw.data)
