"""The one exception tree of agentcast.

Every refusal a client can see is an :class:`AgentcastError` with a stable ``code`` (listed in
``docs/protocol.md``) and a human ``message``. Transport code turns these into error replies
or HTTP error bodies; it never invents codes of its own.
"""

from __future__ import annotations


class AgentcastError(Exception):
    """Base of every agentcast error; ``code`` is stable, ``message`` is for humans."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        """The ``error`` object of a reply."""
        return {"code": self.code, "message": self.message}


class ProtocolError(AgentcastError):
    """A command the client sent is malformed or not allowed; the connection stays open."""

    code = "bad_request"
    command_id: int | str | None = None


class BadJson(ProtocolError):
    code = "bad_json"


class MissingField(ProtocolError):
    code = "missing_field"


class UnknownCommand(ProtocolError):
    code = "unknown_command"


class HelloRequired(ProtocolError):
    code = "hello_required"


class AlreadyHello(ProtocolError):
    code = "already_hello"


class UnsupportedProtocol(ProtocolError):
    code = "unsupported_protocol"


class Unsupported(ProtocolError):
    code = "unsupported"


class InvalidTopic(ProtocolError):
    code = "invalid_topic"


class WildcardPublish(ProtocolError):
    code = "wildcard_publish"


class PayloadTooLarge(ProtocolError):
    code = "payload_too_large"


class TooManySubscriptions(ProtocolError):
    code = "too_many_subscriptions"


class NotSubscribed(ProtocolError):
    code = "not_subscribed"


class ClientError(AgentcastError):
    """Raised by the Python SDK when the server refused a command (``code`` is the server's)."""


class ConnectionClosed(AgentcastError):
    """Raised by the Python SDK when the connection closed and will not be reopened."""

    code = "connection_closed"

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code


class NotDurable(ProtocolError):
    code = "not_durable"


class PositionLost(ProtocolError):
    code = "position_lost"


class Overloaded(AgentcastError):
    """Too much work is pending; retry later (with the same idempotency key)."""

    code = "overloaded"


class Unavailable(AgentcastError):
    """The history store failed; the publish may or may not be stored, so retry it with
    the same idempotency key."""

    code = "unavailable"


class NotInFlight(ProtocolError):
    code = "not_in_flight"
