"""Decoding of server messages for the client (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from agentcast.errors import ClientError
from agentcast.protocol.envelope import Envelope


@dataclass(slots=True, frozen=True)
class Reply:
    """A ``reply`` message: ``result`` when ``error`` is ``None``, else the refusal."""

    id: object
    result: Any = None
    error: ClientError | None = None

    @property
    def lamport(self) -> int | None:
        """The Lamport time a successful reply carries (``publish`` results do)."""
        if self.error is None and isinstance(self.result, dict):
            value = self.result.get("lamport")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None


@dataclass(slots=True, frozen=True)
class GroupEvent:
    """A consumer-group delivery: ``envelope`` handed to this connection as a member of
    ``group``, for the ``attempt``-th time (1 on the first delivery)."""

    group: str
    attempt: int
    envelope: Envelope


class Ignored:
    """A message the client has no use for (heartbeat, unknown type)."""


IGNORED = Ignored()

ServerMessage = Envelope | GroupEvent | Reply | Ignored


class MalformedMessage(ValueError):
    """A frame that breaks the wire protocol (not JSON, binary, missing fields)."""


def decode_server_message(message: str | bytes) -> ServerMessage:
    """Decode one server frame into an event envelope, a group delivery, a reply, or
    :data:`IGNORED`.

    Raises :class:`MalformedMessage` for a binary frame, invalid JSON or a malformed event.
    """
    if isinstance(message, bytes):
        raise MalformedMessage("binary frames are not part of the protocol")
    try:
        data = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"frame is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedMessage("a server message must be a JSON object")
    kind = data.get("type")
    if kind == "event":
        raw = data.get("event")
        if not isinstance(raw, dict):
            raise MalformedMessage("an event message needs an 'event' object")
        try:
            envelope = Envelope.from_dict(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage(f"malformed event: {exc!r}") from None
        if "group" not in data:
            return envelope
        group, attempt = data.get("group"), data.get("attempt")
        if not isinstance(group, str) or not group:
            raise MalformedMessage("a group delivery needs a 'group' name")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise MalformedMessage("a group delivery needs an 'attempt' of at least 1")
        return GroupEvent(group, attempt, envelope)
    if kind == "reply":
        if data.get("ok") is True:
            return Reply(data.get("id"), data.get("result"))
        return Reply(
            data.get("id"), error=refusal(data.get("error"), "the node refused the command")
        )
    return IGNORED


def refusal(raw: Any, default_message: str) -> ClientError:
    """The :class:`~agentcast.errors.ClientError` of an ``error`` object of the protocol
    (``{"code", "message"}``); a missing or malformed field reads as code ``internal`` and
    ``default_message``."""
    error = raw if isinstance(raw, Mapping) else {}
    return ClientError(
        str(error.get("message") or default_message),
        code=str(error.get("code") or "internal"),
    )
