"""How the Redis history store encodes drafts for its append script and decodes stream
entries and script replies back into stored events."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from agentcast.storage.base import AppendResult, EventDraft, StoredEvent
from agentcast.storage.memory import rfc3339_micros

_SIZES: Final = struct.Struct(">IIII")


def _metadata(draft: EventDraft) -> bytes:
    return orjson.dumps(
        [
            draft.id,
            draft.time,
            draft.source,
            draft.headers,
            draft.correlation_id,
            draft.causation_id,
            draft.lamport,
        ]
    )


def pack_draft(draft: EventDraft) -> bytes:
    """A draft as the append script reads it (raises ValueError for a bad time)."""
    micros = str(rfc3339_micros(draft.time)).encode()
    key = draft.idempotency_key
    marker = b"" if key is None else b"k" + key.encode()
    metadata, payload = _metadata(draft), draft.payload
    sizes = _SIZES.pack(len(marker), len(metadata), len(payload), len(micros))
    return b"".join((sizes, marker, metadata, payload, micros))


def append_results(
    drafts: Sequence[EventDraft], indexes: Sequence[int], reply: Any
) -> list[AppendResult]:
    """The results for one topic's drafts (``indexes`` into ``drafts``) from its script's
    reply: ``[epoch, created, first new seq, (position, seq, entry or 0)...]``."""
    epoch = reply[0].decode()
    seq = int(reply[2])
    duplicates = {
        int(reply[i]) - 1: (int(reply[i + 1]), reply[i + 2]) for i in range(3, len(reply), 3)
    }
    results = []
    for position, index in enumerate(indexes):
        draft = drafts[index]
        duplicate = duplicates.get(position)
        if duplicate is None:
            results.append(AppendResult(StoredEvent.from_draft(draft, epoch, seq)))
            seq += 1
        elif duplicate[1]:
            results.append(AppendResult(script_entry(draft.topic, epoch, duplicate[1]), True))
        else:  # the original was trimmed: its position is all that is left
            results.append(AppendResult(StoredEvent.from_draft(draft, epoch, duplicate[0]), True))
    return results


def stream_event(
    topic: str, epoch: str, entry_id: bytes, fields: Mapping[bytes, bytes]
) -> StoredEvent:
    """A stored event from a stream entry."""
    id_, time_, source, headers, correlation_id, causation_id, lamport = orjson.loads(fields[b"d"])
    return StoredEvent(
        id_,
        topic,
        epoch,
        int(entry_id.split(b"-", 1)[0]),
        time_,
        source,
        bytes(fields[b"p"]),
        headers,
        correlation_id,
        causation_id,
        lamport,
    )


def script_entry(topic: str, epoch: str, raw: Sequence[Any]) -> StoredEvent:
    """A stored event from an entry as a script returns it: ``[id, [field, value, ...]]``."""
    flat = raw[1]
    return stream_event(topic, epoch, raw[0], dict(zip(flat[::2], flat[1::2], strict=True)))
