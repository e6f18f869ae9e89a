"""Connection tokens: JWTs signed with HS256, RS256 or ES256, verified into a
:class:`~agentcast.security.principal.Principal`.

Key selection never trusts the token beyond naming a key: each configured key has exactly
one algorithm, and a token verifies only with a key of the algorithm its header names. A
token whose ``kid`` names a configured key is checked against that key alone; otherwise
against every key without a ``kid`` of that algorithm. ``alg: none``, algorithms other than
HS256/RS256/ES256, ``crit`` and ``b64`` headers are refused, and keys embedded in the token
(``jwk``, ``jku``, ``x5u``, ``x5c``) are ignored. So an HS256 token "signed" with an RSA
public key cannot pass: no HS256 key is the RSA key.

Claims: ``sub`` (string) and ``tenant`` (one topic segment) are required, ``exp`` is
required, ``nbf`` is honoured, ``aud`` must name a configured audience (a token carrying
``aud`` is refused when none is configured), ``iss`` must be a configured issuer when
issuers are configured, ``caps`` is ``{pattern: [operations]}`` within the tenant, and
``admin: true`` is accepted only when the node allows admin tokens. Times are checked
against an injected clock with ``leeway`` seconds of tolerance.

Every refusal is :class:`~agentcast.security.errors.Unauthorized` with a message that names
what failed but never a key or the token itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agentcast.security.capabilities import Capabilities, parse_grants, validate_tenant
from agentcast.security.config import JWT_SECRET_MIN_BYTES, PublicKeyConfig, SecurityConfig
from agentcast.security.errors import Unauthorized, config_error
from agentcast.security.principal import Principal, PrincipalKind

SUPPORTED_ALGORITHMS = ("HS256", "RS256", "ES256")
MAX_TOKEN_CHARS = 8192
MAX_SUBJECT_CHARS = 256
MIN_RSA_BITS = 2048
_REFUSED_HEADERS = ("crit", "b64")
_JWK_TYPES = ("RSA", "EC", "oct")


@dataclass(slots=True, frozen=True)
class VerificationKey:
    """One key able to verify tokens of exactly one algorithm.

    ``key`` is the HMAC secret (bytes) for HS256, a public key object otherwise;
    ``source`` says where it came from, for config errors (never the key itself).
    """

    alg: str
    key: Any
    kid: str | None
    source: str


def load_keys(config: SecurityConfig) -> tuple[VerificationKey, ...]:
    """Every verification key the config names, read and checked now.

    Raises :class:`agentcast.config.ConfigError` for an unreadable file, a PEM that is not a
    public key of the named algorithm, a weak key, or a JWKS file without a usable key.
    """
    keys: list[VerificationKey] = [
        VerificationKey("HS256", secret.encode(), None, f"jwt_secrets[{index}]")
        for index, secret in enumerate(config.jwt_secrets)
    ]
    for index, entry in enumerate(config.jwt_public_keys):
        keys.append(_load_public_key(entry, f"jwt_public_keys[{index}]"))
    if config.jwks_file is not None:
        keys.extend(load_jwks_file(config.jwks_file))
    kids = [key.kid for key in keys if key.kid is not None]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
    if duplicates:
        raise config_error(f"[security] key id(s) {duplicates} are used by more than one key")
    return tuple(keys)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise config_error(f"[security] {what}: cannot read {path}: {exc.strerror}") from None


def _load_public_key(entry: PublicKeyConfig, source: str) -> VerificationKey:
    data = entry.pem.encode() if entry.pem is not None else _read(str(entry.file), source)
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            public_key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            public_key = serialization.load_pem_public_key(data)
    except ValueError:
        raise config_error(
            f"[security] {source}: not a PEM public key or certificate "
            "(a private key does not belong here)"
        ) from None
    _check_key_type(entry.alg, public_key, source)
    return VerificationKey(entry.alg, public_key, entry.kid, source)


def _check_key_type(alg: str, key: Any, source: str) -> None:
    if alg == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            raise config_error(f"[security] {source}: RS256 needs an RSA public key")
        if key.key_size < MIN_RSA_BITS:
            raise config_error(f"[security] {source}: RSA keys must be >= {MIN_RSA_BITS} bits")
    elif alg == "ES256":
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise config_error(f"[security] {source}: ES256 needs a P-256 public key")
    elif alg == "HS256":
        if not isinstance(key, bytes) or len(key) < JWT_SECRET_MIN_BYTES:
            raise config_error(
                f"[security] {source}: HS256 secrets must be >= {JWT_SECRET_MIN_BYTES} bytes"
            )
    else:
        raise config_error(f"[security] {source}: algorithm {alg!r} is not supported")


def load_jwks_file(path: str) -> list[VerificationKey]:
    """The signing keys of a local JWKS file (``{"keys": [...]}``).

    Keys whose ``use`` is not ``sig`` or whose algorithm is not HS256/RS256/ES256 are
    skipped; a file with no usable key, or with a malformed key, is a config error.
    """
    try:
        document = json.loads(_read(path, "jwks_file"))
    except json.JSONDecodeError as exc:
        raise config_error(f"[security] jwks_file {path}: not valid JSON: {exc.msg}") from None
    items = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise config_error(f"[security] jwks_file {path}: expected an object with 'keys'")
    keys: list[VerificationKey] = []
    for index, item in enumerate(items):
        source = f"jwks_file key #{index}"
        if not isinstance(item, dict):
            raise config_error(f"[security] {source}: not an object")
        if item.get("use", "sig") != "sig" or item.get("kty") not in _JWK_TYPES:
            continue
        if "alg" in item and item["alg"] not in SUPPORTED_ALGORITHMS:
            continue
        try:
            jwk = jwt.PyJWK(item)
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
            raise config_error(
                f"[security] {source}: unusable key ({type(exc).__name__})"
            ) from None
        if jwk.algorithm_name not in SUPPORTED_ALGORITHMS:
            continue
        kid = item.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise config_error(f"[security] {source}: 'kid' must be a string")
        _check_key_type(jwk.algorithm_name, jwk.key, source)
        keys.append(VerificationKey(jwk.algorithm_name, jwk.key, kid, source))
    if not keys:
        raise config_error(f"[security] jwks_file {path}: no usable signing key")
    return keys


class TokenVerifier:
    """Verifies connection tokens against a fixed set of keys and claim rules."""

    def __init__(
        self,
        keys: Iterable[VerificationKey],
        *,
        audience: Sequence[str] = (),
        issuer: Sequence[str] = (),
        leeway: float = 30.0,
        allow_admin: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = tuple(keys)
        self.audience = frozenset(audience)
        self.issuer = frozenset(issuer)
        self.leeway = float(leeway)
        self.allow_admin = allow_admin
        self.clock = clock
        self._by_kid = {key.kid: key for key in self.keys if key.kid is not None}
        self._jws = jwt.PyJWS()

    @classmethod
    def from_config(
        cls, config: SecurityConfig, *, clock: Callable[[], float] = time.time
    ) -> TokenVerifier:
        """A verifier for the config's keys (read now; see :func:`load_keys`)."""
        return cls(
            load_keys(config),
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway=config.jwt_leeway,
            allow_admin=config.allow_admin_tokens,
            clock=clock,
        )

    def verify(self, token: object) -> Principal:
        """The principal a valid token stands for; :class:`Unauthorized` otherwise."""
        if not isinstance(token, str) or not token:
            raise Unauthorized("the token must be a non-empty string", reason="malformed")
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized(
                f"the token is longer than {MAX_TOKEN_CHARS} characters", reason="malformed"
            )
        header = self._header(token)
        payload = self._verify_signature(token, header)
        return self._principal(payload)

    def _header(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the token is not a well-formed JWT", reason="malformed") from None
        alg = header.get("alg")
        if alg not in SUPPORTED_ALGORITHMS:
            shown = alg if isinstance(alg, str) and len(alg) <= 16 else "?"
            raise Unauthorized(f"token algorithm {shown!r} is not accepted", reason="algorithm")
        for name in _REFUSED_HEADERS:
            if name in header:
                raise Unauthorized(f"token header {name!r} is not supported", reason="malformed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("token 'kid' must be a string", reason="malformed")
        return header

    def _candidates(self, header: dict[str, Any]) -> list[VerificationKey]:
        alg: str = header["alg"]
        kid: str | None = header.get("kid")
        if kid is not None and kid in self._by_kid:
            key = self._by_kid[kid]
            if key.alg != alg:
                raise Unauthorized(
                    "token algorithm does not match the algorithm of its key", reason="algorithm"
                )
            return [key]
        candidates = [key for key in self.keys if key.kid is None and key.alg == alg]
        if not candidates:
            if kid is not None:
                raise Unauthorized("token 'kid' names no configured key", reason="unknown_key")
            raise Unauthorized(f"no key is configured for {alg} tokens", reason="algorithm")
        return candidates

    def _verify_signature(self, token: str, header: dict[str, Any]) -> dict[str, Any]:
        for key in self._candidates(header):
            try:
                decoded = self._jws.decode_complete(token, key.key, algorithms=[key.alg])
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                raise Unauthorized(
                    "the token is not a well-formed JWT", reason="malformed"
                ) from None
            try:
                payload = json.loads(decoded["payload"])
            except (ValueError, TypeError):
                payload = None
            if not isinstance(payload, dict):
                raise Unauthorized("the token payload is not a JSON object", reason="malformed")
            return payload
        raise Unauthorized(
            "token signature does not verify with any configured key", reason="signature"
        )

    def _principal(self, claims: dict[str, Any]) -> Principal:
        now = self.clock()
        exp = _number(claims, "exp", required=True)
        assert exp is not None
        if now >= exp + self.leeway:
            raise Unauthorized("the token has expired", reason="expired")
        nbf = _number(claims, "nbf", required=False)
        if nbf is not None and now + self.leeway < nbf:
            raise Unauthorized("the token is not valid yet", reason="not_yet_valid")
        self._check_audience(claims)
        if self.issuer:
            issuer = claims.get("iss")
            if not isinstance(issuer, str) or issuer not in self.issuer:
                raise Unauthorized("token issuer is not accepted", reason="issuer")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_CHARS:
            raise Unauthorized(
                f"token 'sub' must be a string of 1-{MAX_SUBJECT_CHARS} characters",
                reason="claims",
            )
        if "tenant" not in claims:
            raise Unauthorized("the token has no 'tenant' claim", reason="claims")
        try:
            tenant = validate_tenant(claims["tenant"])
        except ValueError as exc:
            raise Unauthorized(f"token 'tenant': {exc}", reason="claims") from None
        admin = claims.get("admin", False)
        if not isinstance(admin, bool):
            raise Unauthorized("token 'admin' must be true or false", reason="claims")
        if admin and not self.allow_admin:
            raise Unauthorized("admin tokens are not accepted by this node", reason="admin")
        try:
            grants = parse_grants(claims.get("caps", {}), tenant=None if admin else tenant)
        except ValueError as exc:
            raise Unauthorized(f"token 'caps': {exc}", reason="claims") from None
        capabilities = Capabilities(grants, tenant=None if admin else tenant)
        return Principal(subject, tenant, capabilities, float(exp), PrincipalKind.TOKEN)

    def _check_audience(self, claims: dict[str, Any]) -> None:
        if "aud" not in claims:
            if self.audience:
                raise Unauthorized("the token has no 'aud' claim", reason="audience")
            return
        aud = claims["aud"]
        values = [aud] if isinstance(aud, str) else aud
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise Unauthorized("token 'aud' must be a string or a list", reason="claims")
        if not self.audience or self.audience.isdisjoint(values):
            raise Unauthorized("token audience is not accepted", reason="audience")


def _number(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise Unauthorized(f"the token has no {name!r} claim", reason="claims")
        return None
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            number = float(value)
    if not math.isfinite(number):
        raise Unauthorized(f"token {name!r} must be a finite number", reason="claims")
    return number
