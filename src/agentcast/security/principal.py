"""Who is on the other end of a connection or request, once authenticated."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentcast.security.capabilities import Capabilities


class PrincipalKind(StrEnum):
    """How a principal was established."""

    TOKEN = "token"
    API_KEY = "api_key"
    ANONYMOUS = "anonymous"
    OPEN = "open"
    """Authentication is off: everything is allowed."""


@dataclass(slots=True, frozen=True)
class Principal:
    """An authenticated identity.

    ``tenant`` is the tenant the principal belongs to (``"*"`` for :attr:`PrincipalKind.OPEN`);
    ``capabilities`` decides every topic operation, including tenant isolation (an admin
    principal's capabilities are unscoped). ``expires_at`` is a Unix time, or ``None`` when
    the credential does not expire.
    """

    subject: str
    tenant: str
    capabilities: Capabilities
    expires_at: float | None = None
    kind: PrincipalKind = PrincipalKind.TOKEN

    @property
    def admin(self) -> bool:
        return self.capabilities.is_admin

    def expired(self, now: float) -> bool:
        """Whether the credential has expired at Unix time ``now``."""
        return self.expires_at is not None and now >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        """What a client may be told about itself (no secret in it)."""
        return {
            "subject": self.subject,
            "tenant": self.tenant,
            "kind": self.kind.value,
            "admin": self.admin,
            "expires_at": self.expires_at,
            "caps": self.capabilities.grants(),
        }


def open_principal() -> Principal:
    """The principal of every connection while authentication is off."""
    return Principal("open", "*", Capabilities.everything(), None, PrincipalKind.OPEN)
