"""API keys for the HTTP API.

A key reads ``ak_<id>_<secret>``: ``id`` is 12 hex digits that name the key in config and
logs, ``secret`` is 32 random bytes (URL-safe base64). Config holds only
``id -> {hash, tenant, caps, admin}`` where ``hash`` is ``sha256:<hex>`` of the whole key;
a fast hash is enough because the secret has 256 bits of entropy (nothing to brute-force).
Verification hashes the presented key and compares digests with
:func:`hmac.compare_digest`, and does the same work (against a dummy digest) when the id is
unknown, so timing tells nothing about which ids exist.

Mint a key with ``python -m agentcast.security.apikeys --tenant acme --cap 'acme.>=publish'``:
it prints the key once and the TOML entry to add under ``[security.api_keys]``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agentcast.security.capabilities import Capabilities, Operation, parse_grants, validate_tenant
from agentcast.security.config import ApiKeyEntry
from agentcast.security.errors import Unauthorized
from agentcast.security.principal import Principal, PrincipalKind

KEY_PREFIX = "ak"
MAX_KEY_CHARS = 256
_KEY_RE = re.compile(r"ak_([A-Za-z0-9]{4,64})_([A-Za-z0-9_\-]{16,160})")
_DUMMY_DIGEST = "sha256:" + "0" * 64


def hash_api_key(key: str) -> str:
    """The stored form of ``key``: ``sha256:<hex digest>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(slots=True, frozen=True)
class MintedKey:
    """A new key (show it once, never store it) and its config entry."""

    key: str
    entry: ApiKeyEntry

    def config_toml(self) -> str:
        """The entry as TOML, ready to paste into the node's config file."""
        entry = self.entry
        caps = ", ".join(
            f"{json.dumps(pattern)} = {json.dumps(list(ops))}" for pattern, ops in entry.caps
        )
        lines = [
            f"[security.api_keys.{entry.key_id}]",
            f"hash = {json.dumps(entry.hash)}",
            f"tenant = {json.dumps(entry.tenant)}",
            f"caps = {{ {caps} }}" if caps else "caps = {}",
        ]
        if entry.admin:
            lines.append("admin = true")
        return "\n".join(lines) + "\n"


def mint_api_key(
    tenant: str,
    caps: Mapping[str, Iterable[Operation | str]],
    *,
    admin: bool = False,
    key_id: str | None = None,
) -> MintedKey:
    """A fresh random key for ``tenant`` with ``caps``; raises :class:`ValueError` for an
    invalid tenant, pattern or operation."""
    tenant = validate_tenant(tenant)
    grants = parse_grants(
        {p: list(ops) for p, ops in caps.items()}, tenant=None if admin else tenant
    )
    key_id = key_id or secrets.token_hex(6)
    if re.fullmatch(r"[A-Za-z0-9]{4,64}", key_id) is None:
        raise ValueError("key id must be 4-64 letters or digits")
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    entry = ApiKeyEntry(
        key_id=key_id,
        hash=hash_api_key(key),
        tenant=tenant,
        caps=tuple((p, tuple(op.value for op in ops)) for p, ops in grants.items()),
        admin=admin,
    )
    return MintedKey(key, entry)


class ApiKeyStore:
    """The configured API keys, checked in constant time per presented key."""

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        self._entries = {entry.key_id: entry for entry in entries}
        self._principals = {
            entry.key_id: Principal(
                subject=f"{KEY_PREFIX}_{entry.key_id}",
                tenant=entry.tenant,
                capabilities=Capabilities(
                    entry.grants(), tenant=None if entry.admin else entry.tenant
                ),
                expires_at=None,
                kind=PrincipalKind.API_KEY,
            )
            for entry in self._entries.values()
        }

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, presented: object) -> Principal:
        """The principal of a valid key; :class:`Unauthorized` for anything else."""
        if not isinstance(presented, str) or len(presented) > MAX_KEY_CHARS:
            raise Unauthorized("the API key is not valid", reason="api_key")
        match = _KEY_RE.fullmatch(presented)
        key_id = match.group(1) if match is not None else ""
        entry = self._entries.get(key_id)
        expected = entry.hash if entry is not None else _DUMMY_DIGEST
        matched = hmac.compare_digest(hash_api_key(presented), expected)
        if entry is None or not matched:
            raise Unauthorized("the API key is not valid", reason="api_key")
        return self._principals[key_id]


def _parse_cap(text: str) -> tuple[str, list[str]]:
    pattern, sep, ops = text.partition("=")
    if not sep or not pattern or not ops:
        raise argparse.ArgumentTypeError(f"{text!r}: use PATTERN=op[,op...]")
    return pattern.strip(), [op.strip() for op in ops.split(",") if op.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Mint one API key and print it with its config entry."""
    parser = argparse.ArgumentParser(
        prog="python -m agentcast.security.apikeys", description="Mint an agentcast API key."
    )
    parser.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    parser.add_argument(
        "--cap",
        action="append",
        default=[],
        type=_parse_cap,
        metavar="PATTERN=OPS",
        help="a grant such as 'acme.>=publish,subscribe' (repeatable)",
    )
    parser.add_argument("--admin", action="store_true", help="allow patterns of any tenant")
    args = parser.parse_args(argv)
    caps: dict[str, list[str]] = {}
    for pattern, ops in args.cap:
        caps.setdefault(pattern, []).extend(ops)
    try:
        minted = mint_api_key(args.tenant, caps, admin=args.admin)
    except ValueError as exc:
        parser.error(str(exc))
    out = sys.stdout
    out.write("# The API key (shown once; keep it in a secret store):\n")
    out.write(f"{minted.key}\n\n")
    out.write("# Add to the node's config file:\n")
    out.write(minted.config_toml())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
