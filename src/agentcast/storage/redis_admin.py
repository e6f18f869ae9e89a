"""Prefix checks, server checks and prefix housekeeping for the Redis history store."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import redis.asyncio as aioredis

from agentcast.config import ConfigError

PREFIX_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ROUNDS: Final = 100_000


def key_pattern(prefix: str) -> str:
    """A ``SCAN MATCH`` pattern for every key a store with ``prefix`` writes, and no other
    prefix's (prefixes hold no ``:``, ``{``, ``}`` or glob characters)."""
    return "{" + prefix + "[:}]*"


async def delete_prefix(client: aioredis.Redis, prefix: str, *, batch: int = 500) -> int:
    """Delete every key of ``prefix`` (``SCAN`` + ``DEL``) and return how many were deleted.

    Meant for tests and for dropping a prefix that no node uses any more: a store still
    appending would recreate its topics."""
    check_prefix(prefix)
    deleted = 0
    cursor = 0
    for _ in range(MAX_ROUNDS):  # SCAN returns cursor 0 once it has visited every key
        cursor, found = await client.scan(cursor, match=key_pattern(prefix), count=batch)
        if found:
            deleted += int(await client.delete(*found))
        if cursor == 0:
            return deleted
    raise RuntimeError(f"SCAN for prefix {prefix!r} did not finish")


def check_prefix(prefix: str) -> None:
    """Raise ValueError unless ``prefix`` matches :data:`PREFIX_PATTERN`."""
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(
            f"prefix {prefix!r} must be 1 to 64 characters of letters, digits, '_', '.', '-'"
        )


def check_server(server: Mapping[str, Any], memory: Mapping[str, Any]) -> None:
    """Refuse a Redis server that cannot hold history: before 7.0 (no script flags), or with
    an ``allkeys-*`` eviction policy (it would delete events or positions silently)."""
    version = str(server.get("redis_version", "0"))
    major = version.split(".", 1)[0]
    if not major.isdigit() or int(major) < 7:
        raise ConfigError(f"the Redis history store needs Redis 7 or newer, not {version}")
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy.startswith("allkeys"):
        raise ConfigError(
            f"Redis evicts any key under maxmemory-policy {policy}: the history store needs "
            "noeviction (or a volatile-* policy; history keys carry no expiry)"
        )
