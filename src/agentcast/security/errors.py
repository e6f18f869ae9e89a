"""Refusals of the security layer: each has a stable ``code``, a human ``message`` that never
contains a secret, an HTTP status for refusals outside a WebSocket, and, where the
connection must end, a WebSocket close code.
"""

from __future__ import annotations

from agentcast.errors import AgentcastError, ProtocolError

CLOSE_TOO_MANY_CONNECTIONS = 4429
"""Close code of a connection refused by a connection limit: reconnect later, with backoff
and jitter (4000-4499 range: the limit frees when other connections close)."""

CLOSE_UNAUTHORIZED = 4502
"""Close code of a connection whose credential was refused: do not reconnect until the
credential changes (4500-4999 range)."""


class SecurityError(AgentcastError):
    """Base of the security refusals.

    ``reason`` is a short machine-readable detail used for metrics and logs only (it is not
    part of the wire protocol); ``close_code`` is set when the refusal ends the connection.
    """

    http_status = 403
    close_code: int | None = None

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or self.code


class Unauthorized(SecurityError):
    """The credential is missing, malformed, forged, expired, or not meant for this node."""

    code = "unauthorized"
    http_status = 401
    close_code = CLOSE_UNAUTHORIZED


class OriginRefused(SecurityError):
    """A browser connection from an Origin that is not on the allowlist."""

    code = "origin_not_allowed"
    http_status = 403


class TooManyConnections(SecurityError):
    """A connection limit (per tenant, per subject, or the node's new-connection rate)."""

    code = "too_many_connections"
    http_status = 429
    close_code = CLOSE_TOO_MANY_CONNECTIONS

    def __init__(self, message: str, *, reason: str = "", retry_after: float = 1.0) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class Forbidden(SecurityError, ProtocolError):
    """The principal's capabilities do not cover this operation on this topic; the
    connection stays open."""

    code = "forbidden"
    http_status = 403


class RateLimited(SecurityError, ProtocolError):
    """Publishing faster than the connection's token bucket allows; the connection stays
    open and the publish had no effect."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, reason: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


def config_error(message: str) -> Exception:
    """An :class:`agentcast.config.ConfigError` (imported late: agentcast.config may import
    this package)."""
    from agentcast.config import ConfigError

    return ConfigError(message)
