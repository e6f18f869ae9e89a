"""The Origin allowlist for browser WebSocket connections.

A browser sends ``Origin: scheme://host[:port]`` on every WebSocket upgrade; a page on another
site can open a socket to the node just as well as the real application, so a node serving
browsers lists the origins it trusts. Matching is exact after normalisation (lowercase
scheme and host, default port dropped): no substring, prefix or suffix rule, so
``https://evil-example.com`` and ``https://example.com.evil.net`` never pass an allowlist of
``https://example.com``. ``*`` allows any origin. A request without an Origin header comes
from a non-browser client and is allowed unless ``allow_missing`` is off.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from agentcast.security.errors import OriginRefused

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)*")
_MAX_ORIGIN = 512


def normalize_origin(value: str, *, allow_trailing_slash: bool = False) -> str | None:
    """``scheme://host[:port]`` in canonical form, or ``None`` if ``value`` is not a valid
    http(s) origin (userinfo, path, query, fragment, spaces, non-ASCII: all invalid)."""
    if len(value) > _MAX_ORIGIN or not value.isascii() or not value.isprintable():
        return None
    if " " in value or "\\" in value:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return None
    allowed_paths = ("", "/") if allow_trailing_slash else ("",)
    if parts.path not in allowed_paths or parts.query or parts.fragment:
        return None
    if "?" in value or "#" in value or "@" in parts.netloc:
        return None
    host = parts.hostname
    if not host:
        return None
    if ":" in host:  # IPv6 literal
        if not re.fullmatch(r"[0-9a-f:.]+", host):
            return None
        host = f"[{host}]"
    elif _HOST_RE.fullmatch(host) is None:
        return None
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginPolicy:
    """Decides whether a WebSocket upgrade's Origin header is acceptable."""

    __slots__ = ("allow_any", "allow_missing", "allowed")

    def __init__(self, allowed: Iterable[str], *, allow_missing: bool = True) -> None:
        """``allowed`` holds ``*`` or origins; each is normalised, an invalid one raises
        :class:`ValueError`."""
        entries = list(allowed)
        self.allow_any = "*" in entries
        normal: set[str] = set()
        for entry in entries:
            if entry == "*":
                continue
            origin = normalize_origin(entry, allow_trailing_slash=True)
            if origin is None:
                raise ValueError(f"{entry[:80]!r} is not an origin")
            normal.add(origin)
        self.allowed = frozenset(normal)
        self.allow_missing = allow_missing

    def allows(self, origin: str | None) -> bool:
        """Whether a request carrying ``origin`` (``None``: no header) may connect."""
        if origin is None:
            return self.allow_missing
        if self.allow_any:
            return True
        normal = normalize_origin(origin)
        return normal is not None and normal in self.allowed

    def check(self, origin: str | None) -> None:
        """Raise :class:`~agentcast.security.errors.OriginRefused` unless :meth:`allows`."""
        if not self.allows(origin):
            if origin is None:
                raise OriginRefused("this node requires an Origin header", reason="origin_missing")
            raise OriginRefused(f"origin {origin[:120]!r} is not allowed", reason="origin")
