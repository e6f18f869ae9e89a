"""Broker URLs: ``redis://host:port/db`` or ``nats://host:port`` (``?prefix=`` for both)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

from agentcast.brokers.base import Broker
from agentcast.config import ConfigError


def open_broker(url: str) -> Broker:
    """A broker for ``url`` (not started)."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    unknown = set(options) - {"prefix"}
    if unknown:
        raise ConfigError(f"broker URL {url!r}: unknown option(s) {sorted(unknown)}")
    base = urlunsplit(parts._replace(query=""))
    prefix = options.get("prefix", "agentcast")
    if parts.scheme in ("redis", "rediss"):
        from agentcast.brokers.redis import RedisBroker

        return RedisBroker(base, prefix=prefix)
    if parts.scheme in ("nats", "tls"):
        from agentcast.brokers.nats import NatsBroker

        return NatsBroker(base, prefix=prefix)
    raise ConfigError(f"broker URL {url!r}: use redis://host:port or nats://host:port")
