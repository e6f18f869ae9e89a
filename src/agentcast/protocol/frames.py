"""Server messages of protocol v1 and their WebSocket framing (sans-I/O).

Server-to-client WebSocket frames are never masked, so a complete frame (header and payload)
is the same bytes for every recipient. :func:`ws_text_frame` builds it once per publication
and the hub hands those bytes to every subscriber's queue; a writer can then concatenate
queued frames into one transport write.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from agentcast.errors import AgentcastError
from agentcast.protocol.commands import CommandId

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
_FIN_TEXT = 0x81


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, final WebSocket text frame carrying ``payload`` (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + payload
    if size < 65536:
        return _LEN16.pack(_FIN_TEXT, 126, size) + payload
    return _LEN64.pack(_FIN_TEXT, 127, size) + payload


def ok_reply(command_id: CommandId, result: Any) -> bytes:
    """The JSON of a success reply."""
    return orjson.dumps({"type": "reply", "id": command_id, "ok": True, "result": result})


def error_reply(command_id: CommandId, error: AgentcastError) -> bytes:
    """The JSON of an error reply carrying ``error.code`` and ``error.message``."""
    return orjson.dumps({"type": "reply", "id": command_id, "ok": False, "error": error.to_dict()})


PING_MESSAGE = b'{"type":"ping"}'


def event_message(envelope_json: bytes) -> bytes:
    """The JSON of an ``event`` push around an already-encoded envelope."""
    return b'{"type":"event","event":' + envelope_json + b"}"
