"""The ``[security]`` configuration table: a frozen :class:`SecurityConfig` and its parser.

:func:`parse_security_config` takes a plain mapping (a TOML ``[security]`` table, or
strings from the environment) and layers it over a base config. It validates shapes and
values without touching the filesystem; key material and TLS files are read when the node
builds :class:`~agentcast.security.guard.Security`. Every problem raises
:class:`agentcast.config.ConfigError` naming the key. docs/security.md lists the keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from agentcast.security.capabilities import Grants, Operation, parse_grants, validate_tenant
from agentcast.security.errors import config_error
from agentcast.security.origin import normalize_origin

JWT_SECRET_MIN_BYTES = 32
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")
API_KEY_ID_RE = re.compile(r"[A-Za-z0-9]{4,64}")
API_KEY_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")


class AuthMode(StrEnum):
    """``off``: everyone may do everything (development). ``token``: every WebSocket
    connection presents a valid token and every HTTP request an API key.
    ``token_or_anonymous``: a credential is checked when given; without one the
    connection gets the anonymous tenant and capabilities."""

    OFF = "off"
    TOKEN = "token"
    TOKEN_OR_ANONYMOUS = "token_or_anonymous"


@dataclass(slots=True, frozen=True)
class PublicKeyConfig:
    """One RS256/ES256 verification key: inline ``pem`` or a ``file`` holding it."""

    alg: str
    pem: str | None = None
    file: str | None = None
    kid: str | None = None


@dataclass(slots=True, frozen=True)
class ApiKeyEntry:
    """One HTTP API key as stored in config: never the key itself, only its hash."""

    key_id: str
    hash: str
    tenant: str
    caps: tuple[tuple[str, tuple[str, ...]], ...] = ()
    admin: bool = False

    def grants(self) -> Grants:
        return {pattern: tuple(Operation(op) for op in ops) for pattern, ops in self.caps}


@dataclass(slots=True, frozen=True)
class SecurityConfig:
    """Every security setting of a node; the defaults change nothing (auth off, any Origin,
    no limits, no TLS). Rates are per second; 0 means unlimited."""

    auth: AuthMode = AuthMode.OFF
    anonymous_tenant: str | None = None
    anonymous_caps: tuple[tuple[str, tuple[str, ...]], ...] = ()
    jwt_secrets: tuple[str, ...] = ()
    jwt_public_keys: tuple[PublicKeyConfig, ...] = ()
    jwks_file: str | None = None
    jwt_audience: tuple[str, ...] = ()
    jwt_issuer: tuple[str, ...] = ()
    jwt_leeway: float = 30.0
    allow_admin_tokens: bool = False
    api_keys: tuple[ApiKeyEntry, ...] = ()
    allowed_origins: tuple[str, ...] = ("*",)
    allow_missing_origin: bool = True
    publish_rate: float = 0.0
    publish_burst: int = 0
    max_connections_per_tenant: int = 0
    max_connections_per_subject: int = 0
    new_connections_per_second: float = 0.0
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def has_jwt_keys(self) -> bool:
        return bool(self.jwt_secrets or self.jwt_public_keys or self.jwks_file)

    @property
    def effective_publish_burst(self) -> int:
        """``publish_burst``, or the rate rounded up (at least 1) when it is 0."""
        return self.publish_burst or max(1, math.ceil(self.publish_rate))

    def anonymous_grants(self) -> Grants:
        return {p: tuple(Operation(op) for op in ops) for p, ops in self.anonymous_caps}


SECURITY_KEYS = frozenset(f.name for f in fields(SecurityConfig))


def parse_security_config(
    values: Mapping[str, Any], base: SecurityConfig | None = None
) -> SecurityConfig:
    """``base`` (default: all defaults) with the keys of ``values`` applied, validated.

    Values may be TOML-typed or strings (environment): lists as comma-separated strings,
    tables as JSON. ``None`` values are skipped. Unknown keys are refused.
    """
    if not isinstance(values, Mapping):
        raise config_error("[security] must be a table")
    config = base or SecurityConfig()
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        parser = _PARSERS.get(key)
        if parser is None:
            raise config_error(f"unknown key {key!r} in [security]")
        try:
            changes[key] = parser(value)
        except (ValueError, TypeError) as exc:
            raise config_error(f"[security] {key}: {exc}") from None
    config = replace(config, **changes)
    _check_consistency(config)
    return config


def _check_consistency(config: SecurityConfig) -> None:
    if config.auth is AuthMode.TOKEN and not config.has_jwt_keys:
        raise config_error(
            "[security] auth = 'token' needs jwt_secrets, jwt_public_keys or jwks_file"
        )
    if config.auth is AuthMode.TOKEN_OR_ANONYMOUS and config.anonymous_tenant is None:
        raise config_error("[security] auth = 'token_or_anonymous' needs anonymous_tenant")
    if config.anonymous_tenant is not None:
        for pattern, _ in config.anonymous_caps:
            if pattern.split(".", 1)[0] != config.anonymous_tenant:
                raise config_error(
                    f"[security] anonymous_caps pattern {pattern!r} is outside "
                    f"anonymous_tenant {config.anonymous_tenant!r}"
                )
    elif config.anonymous_caps:
        raise config_error("[security] anonymous_caps needs anonymous_tenant")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise config_error("[security] tls_cert and tls_key must be set together")


# -- value parsers (raise ValueError/TypeError; the caller names the key) ----------------


def _table(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a table and not valid JSON: {exc.msg}") from None
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError("must be a string or a list of strings")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be true or false")


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError("must be a finite number >= 0")
    return number


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("must be an integer")
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty path")
    return value


def _auth(value: Any) -> AuthMode:
    try:
        return AuthMode(value)
    except ValueError:
        modes = ", ".join(repr(m.value) for m in AuthMode)
        raise ValueError(f"must be one of {modes}") from None


def _tenant(value: Any) -> str:
    return validate_tenant(value)


def _caps(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    grants = parse_grants(_table(value), tenant=None)
    return tuple((pattern, tuple(op.value for op in ops)) for pattern, ops in grants.items())


def _jwt_secrets(value: Any) -> tuple[str, ...]:
    secrets = _strings(value)
    for secret in secrets:
        if secret.lstrip().startswith("-----BEGIN"):
            raise ValueError("a PEM key is not an HMAC secret; put public keys in jwt_public_keys")
        if len(secret.encode()) < JWT_SECRET_MIN_BYTES:
            raise ValueError(f"each secret must be at least {JWT_SECRET_MIN_BYTES} bytes")
    return secrets


def _public_keys(value: Any) -> tuple[PublicKeyConfig, ...]:
    items = _table(value)
    if not isinstance(items, list | tuple):
        raise ValueError("must be a list of tables {alg, pem or file, kid}")
    keys: list[PublicKeyConfig] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError("each entry must be a table {alg, pem or file, kid}")
        unknown = set(item) - {"alg", "pem", "file", "kid"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in an entry")
        alg = item.get("alg")
        if alg not in PUBLIC_KEY_ALGORITHMS:
            raise ValueError(f"'alg' must be one of {', '.join(PUBLIC_KEY_ALGORITHMS)}")
        pem, file, kid = item.get("pem"), item.get("file"), item.get("kid")
        if (pem is None) == (file is None):
            raise ValueError("each entry needs exactly one of 'pem' and 'file'")
        for name, field_value in (("pem", pem), ("file", file), ("kid", kid)):
            if field_value is not None and (not isinstance(field_value, str) or not field_value):
                raise ValueError(f"'{name}' must be a non-empty string")
        keys.append(PublicKeyConfig(alg=alg, pem=pem, file=file, kid=kid))
    kids = [key.kid for key in keys if key.kid is not None]
    if len(kids) != len(set(kids)):
        raise ValueError("two entries share a 'kid'")
    return tuple(keys)


def _api_keys(value: Any) -> tuple[ApiKeyEntry, ...]:
    table = _table(value)
    if not isinstance(table, Mapping):
        raise ValueError("must be a table of key id -> {hash, tenant, caps, admin}")
    entries: list[ApiKeyEntry] = []
    for key_id, item in table.items():
        if not isinstance(key_id, str) or API_KEY_ID_RE.fullmatch(key_id) is None:
            raise ValueError(f"key id {str(key_id)[:40]!r} must be 4-64 letters or digits")
        if not isinstance(item, Mapping):
            raise ValueError(f"entry {key_id!r} must be a table")
        unknown = set(item) - {"hash", "tenant", "caps", "admin"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in entry {key_id!r}")
        digest = item.get("hash")
        if not isinstance(digest, str) or API_KEY_HASH_RE.fullmatch(digest) is None:
            raise ValueError(f"entry {key_id!r}: 'hash' must be 'sha256:<64 hex digits>'")
        try:
            tenant = validate_tenant(item.get("tenant"))
        except ValueError as exc:
            raise ValueError(f"entry {key_id!r}: {exc}") from None
        admin = _bool(item.get("admin", False))
        try:
            grants = parse_grants(item.get("caps", {}), tenant=None if admin else tenant)
        except ValueError as exc:
            raise ValueError(f"entry {key_id!r}: {exc}") from None
        caps = tuple((pattern, tuple(op.value for op in ops)) for pattern, ops in grants.items())
        entries.append(ApiKeyEntry(key_id, digest, tenant, caps, admin))
    return tuple(entries)


def _origins(value: Any) -> tuple[str, ...]:
    origins: list[str] = []
    for entry in _strings(value):
        if entry == "*":
            origins.append(entry)
            continue
        normal = normalize_origin(entry, allow_trailing_slash=True)
        if normal is None:
            raise ValueError(f"{entry[:80]!r} is not an origin (use scheme://host[:port] or '*')")
        origins.append(normal)
    return tuple(origins)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "auth": _auth,
    "anonymous_tenant": _tenant,
    "anonymous_caps": _caps,
    "jwt_secrets": _jwt_secrets,
    "jwt_public_keys": _public_keys,
    "jwks_file": _path,
    "jwt_audience": _strings,
    "jwt_issuer": _strings,
    "jwt_leeway": _non_negative_float,
    "allow_admin_tokens": _bool,
    "api_keys": _api_keys,
    "allowed_origins": _origins,
    "allow_missing_origin": _bool,
    "publish_rate": _non_negative_float,
    "publish_burst": _non_negative_int,
    "max_connections_per_tenant": _non_negative_int,
    "max_connections_per_subject": _non_negative_int,
    "new_connections_per_second": _non_negative_float,
    "tls_cert": _path,
    "tls_key": _path,
}
