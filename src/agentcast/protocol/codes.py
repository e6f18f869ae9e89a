"""WebSocket close codes of protocol v1 and the reconnect rule a client applies to them."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Close codes; 4000-4499 mean "reconnect", 4500-4999 mean "do not reconnect"."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    SHUTDOWN = 4000
    SLOW_CONSUMER = 4001
    IDLE_TIMEOUT = 4002
    SERVER_ERROR = 4003
    TOKEN_EXPIRED = 4004
    TOO_MANY_CONNECTIONS = 4429
    PROTOCOL_ERROR = 4500
    UNSUPPORTED_DATA = 4501
    UNAUTHORIZED = 4502


_RECONNECT_STANDARD = frozenset({1001, 1006, 1011, 1012, 1013})


def should_reconnect(code: int | None) -> bool:
    """Whether a client should reconnect after the server closed with ``code``.

    ``None`` (no close frame: the TCP connection dropped) means reconnect.
    """
    if code is None:
        return True
    if 4000 <= code < 4500:
        return True
    if 4500 <= code < 5000:
        return False
    return code in _RECONNECT_STANDARD
