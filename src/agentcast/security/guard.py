"""The node's security front: one :class:`Security` per node, one :class:`ConnectionAuth`
per WebSocket connection.

Where each check runs (the transports call these, nothing else):

* WebSocket upgrade: :meth:`Security.admit_upgrade` checks the Origin allowlist, the node's
  new-connection rate and a ``token`` in the URL query; it returns the connection's
  :class:`ConnectionAuth`.
* ``hello``: :meth:`ConnectionAuth.hello` settles the principal (token, anonymous or open)
  and takes a per-tenant/per-subject connection slot.
* ``publish``/``subscribe`` (and ``hello.resume``): :meth:`ConnectionAuth.check_publish`
  (capabilities, then the publish token bucket) and :meth:`ConnectionAuth.check_subscribe`.
* disconnect: :meth:`ConnectionAuth.release` returns the slot.
* HTTP: :meth:`Security.authenticate_http` (API key) then :meth:`Security.check_http`.

Refusals are :mod:`agentcast.security.errors` exceptions; each is counted in
:attr:`Security.stats`.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agentcast.errors import AlreadyHello, HelloRequired
from agentcast.protocol.topics import tenant_of
from agentcast.security.apikeys import ApiKeyStore
from agentcast.security.capabilities import Capabilities, Operation
from agentcast.security.config import AuthMode, SecurityConfig
from agentcast.security.errors import (
    Forbidden,
    RateLimited,
    SecurityError,
    TooManyConnections,
    Unauthorized,
    config_error,
)
from agentcast.security.limits import ConnectionLimits, ConnectionSlot, TokenBucket
from agentcast.security.origin import OriginPolicy
from agentcast.security.principal import Principal, PrincipalKind, open_principal
from agentcast.security.stats import SecurityStats
from agentcast.security.tls import server_ssl_context
from agentcast.security.tokens import TokenVerifier

TOKEN_QUERY_PARAM = "token"
ANONYMOUS_SUBJECT = "anonymous"
MAX_QUERY_FIELDS = 64


class Security:
    """Node-wide security state built from a :class:`SecurityConfig`.

    Building it reads key material (JWKS and PEM files) and raises
    :class:`agentcast.config.ConfigError` on any problem, so a node fails at start rather
    than at the first connection. ``clock`` is monotonic seconds (rate limits),
    ``wall_clock`` Unix seconds (token expiry).
    """

    def __init__(
        self,
        config: SecurityConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = config or SecurityConfig()
        self.mode = config.auth
        self.clock = clock
        self.wall_clock = wall_clock
        self.stats = SecurityStats()
        try:
            self.origins = OriginPolicy(
                config.allowed_origins, allow_missing=config.allow_missing_origin
            )
        except ValueError as exc:
            raise config_error(f"[security] allowed_origins: {exc}") from None
        self.verifier: TokenVerifier | None = None
        if config.auth is not AuthMode.OFF and config.has_jwt_keys:
            self.verifier = TokenVerifier.from_config(config, clock=wall_clock)
        self.api_keys = ApiKeyStore(config.api_keys)
        self.limits = ConnectionLimits(
            config.max_connections_per_tenant, config.max_connections_per_subject
        )
        self.connection_rate: TokenBucket | None = None
        if config.new_connections_per_second > 0:
            rate = config.new_connections_per_second
            self.connection_rate = TokenBucket(rate, max(1.0, rate), clock)
        self.anonymous: Principal | None = None
        if config.anonymous_tenant is not None:
            tenant = config.anonymous_tenant
            self.anonymous = Principal(
                ANONYMOUS_SUBJECT,
                tenant,
                Capabilities(config.anonymous_grants(), tenant=tenant),
                None,
                PrincipalKind.ANONYMOUS,
            )
        self.open = open_principal()
        self._http_buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        """Whether credentials are checked at all (``auth`` is not ``off``)."""
        return self.mode is not AuthMode.OFF

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context when ``tls_cert``/``tls_key`` are set, else ``None``."""
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        return server_ssl_context(self.config.tls_cert, self.config.tls_key)

    # -- WebSocket ---------------------------------------------------------------------

    def admit_upgrade(self, origin: str | None, target: str = "") -> ConnectionAuth:
        """Check a WebSocket upgrade request; return the connection's auth state.

        ``origin`` is the Origin header (``None`` when absent), ``target`` the request
        target (path and query). Raises :class:`~agentcast.security.errors.OriginRefused`,
        :class:`~agentcast.security.errors.TooManyConnections` (node rate) or
        :class:`~agentcast.security.errors.Unauthorized` (a ``token`` query parameter that
        does not verify); answer those with ``exc.http_status`` and no upgrade.
        """
        try:
            self.origins.check(origin)
        except SecurityError as exc:
            self.stats.count(self.stats.connections_refused, exc.reason)
            raise
        bucket = self.connection_rate
        if bucket is not None and not bucket.try_take():
            self.stats.count(self.stats.connections_refused, "node_rate")
            raise TooManyConnections(
                "the node is accepting new connections more slowly; retry later",
                reason="node_rate",
                retry_after=bucket.retry_after(),
            )
        url_principal = None
        if self.enabled:
            try:
                token = token_from_target(target)
            except Unauthorized as exc:
                self.stats.count(self.stats.auth_failures, exc.reason)
                raise
            if token is not None:
                url_principal = self.verify_token(token)
        return ConnectionAuth(self, url_principal)

    def connection(self) -> ConnectionAuth:
        """Auth state for a connection that skipped :meth:`admit_upgrade` (in-process)."""
        return ConnectionAuth(self, None)

    def verify_token(self, token: object) -> Principal:
        """Verify a connection token (counting failures)."""
        if self.verifier is None:
            self.stats.count(self.stats.auth_failures, "no_keys")
            raise Unauthorized("this node accepts no connection tokens", reason="no_keys")
        try:
            return self.verifier.verify(token)
        except Unauthorized as exc:
            self.stats.count(self.stats.auth_failures, exc.reason)
            raise

    # -- HTTP --------------------------------------------------------------------------

    def authenticate_http(self, authorization: str | None) -> Principal:
        """The principal of an HTTP request from its ``Authorization`` header.

        ``Bearer <API key>``; without a header: the anonymous principal in
        ``token_or_anonymous`` mode, :class:`Unauthorized` in ``token`` mode. A header that
        is present but wrong is refused in every mode but ``off``.
        """
        if not self.enabled:
            return self.open
        if authorization is None or not authorization.strip():
            if self.mode is AuthMode.TOKEN_OR_ANONYMOUS and self.anonymous is not None:
                return self.anonymous
            self.stats.count(self.stats.auth_failures, "missing")
            raise Unauthorized(
                "this API needs an 'Authorization: Bearer <API key>' header", reason="missing"
            )
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            self.stats.count(self.stats.auth_failures, "malformed")
            raise Unauthorized(
                "the Authorization header must be 'Bearer <API key>'", reason="malformed"
            )
        try:
            return self.api_keys.verify(credential.strip())
        except Unauthorized as exc:
            self.stats.count(self.stats.auth_failures, exc.reason)
            raise

    def check_http(self, principal: Principal, op: Operation, topic: str) -> None:
        """Capabilities, then (for publishes) the per-credential publish bucket: one bucket
        per API key, one shared by anonymous requests, one for requests while auth is off."""
        self._check_caps(principal, op, topic)
        if op is not Operation.PUBLISH or self.config.publish_rate <= 0:
            return
        key = principal.subject if principal.kind is PrincipalKind.API_KEY else principal.kind
        bucket = self._http_buckets.get(key)
        if bucket is None:
            bucket = self._http_buckets[key] = self._publish_bucket()
        self._take(bucket, "http")

    # -- shared ------------------------------------------------------------------------

    def _publish_bucket(self) -> TokenBucket:
        return TokenBucket(
            self.config.publish_rate, self.config.effective_publish_burst, self.clock
        )

    def _take(self, bucket: TokenBucket, transport: str) -> None:
        if bucket.try_take():
            return
        self.stats.count(self.stats.rate_limited, transport)
        retry = bucket.retry_after()
        raise RateLimited(
            f"publish rate limit of {bucket.rate:g}/s exceeded; retry in {retry:.3f}s",
            retry_after=retry,
        )

    def _check_caps(self, principal: Principal, op: Operation, topic: str) -> None:
        caps = principal.capabilities
        if caps.allows(op, topic):
            return
        self.stats.count(self.stats.forbidden, op.value)
        if caps.tenant is not None and tenant_of(topic) != caps.tenant:
            raise Forbidden(f"{topic!r} is outside tenant {caps.tenant!r}", reason="tenant")
        raise Forbidden(f"no capability to {op.value} on {topic!r}", reason="capability")


class ConnectionAuth:
    """The security state of one WebSocket connection, from upgrade to disconnect."""

    __slots__ = ("_bucket", "_slot", "_url_principal", "principal", "security")

    def __init__(self, security: Security, url_principal: Principal | None) -> None:
        self.security = security
        self._url_principal = url_principal
        self.principal: Principal | None = None
        self._slot: ConnectionSlot | None = None
        self._bucket: TokenBucket | None = None

    def hello(self, token: str | None) -> Principal:
        """Settle who this connection is and count it against the connection limits.

        While auth is ``off`` the token is ignored. Otherwise the ``hello`` token wins over
        one from the URL; without either, ``token_or_anonymous`` gives the anonymous
        principal and ``token`` refuses. Raises :class:`Unauthorized` or
        :class:`TooManyConnections`: reply with the error, then close the connection with
        ``exc.close_code``.
        """
        if self.principal is not None:
            raise AlreadyHello("'hello' was already accepted on this connection")
        security = self.security
        principal: Principal
        if not security.enabled:
            principal = security.open
        elif token is not None:
            principal = security.verify_token(token)
        elif self._url_principal is not None:
            principal = self._url_principal
            if principal.expired(security.wall_clock()):
                security.stats.count(security.stats.auth_failures, "expired")
                raise Unauthorized("the token has expired", reason="expired")
        elif security.mode is AuthMode.TOKEN_OR_ANONYMOUS and security.anonymous is not None:
            principal = security.anonymous
        else:
            security.stats.count(security.stats.auth_failures, "missing")
            raise Unauthorized("this node requires a token in 'hello'", reason="missing")
        if principal.kind is not PrincipalKind.OPEN:
            subject = principal.subject if principal.kind is PrincipalKind.TOKEN else None
            try:
                self._slot = security.limits.acquire(principal.tenant, subject)
            except TooManyConnections as exc:
                security.stats.count(security.stats.connections_refused, exc.reason)
                raise
            security.stats.authenticated += 1
        if security.config.publish_rate > 0:
            self._bucket = security._publish_bucket()
        self.principal = principal
        self._url_principal = None
        return principal

    def refresh(self, token: str) -> Principal:
        """Replace the credential of an established connection with ``token``.

        The new token must verify and name the same subject and tenant; otherwise
        :class:`Unauthorized` is raised and the old credential stays in force (until it
        expires). While auth is ``off`` there is nothing to refresh (the open principal is
        kept).
        """
        current = self._principal()
        security = self.security
        if not security.enabled:
            return current
        fresh = security.verify_token(token)
        if (fresh.subject, fresh.tenant) != (current.subject, current.tenant):
            security.stats.count(security.stats.auth_failures, "refresh_mismatch")
            raise Unauthorized(
                "a refreshed token must name the same subject and tenant",
                reason="refresh_mismatch",
            )
        self.principal = fresh
        return fresh

    def _principal(self) -> Principal:
        if self.principal is None:
            raise HelloRequired("send 'hello' first")
        return self.principal

    def check(self, op: Operation, topic: str) -> None:
        """Raise :class:`Forbidden` unless the principal may ``op`` on ``topic``."""
        self.security._check_caps(self._principal(), op, topic)

    def check_publish(self, topic: str) -> None:
        """Capabilities first (a refused publish spends no token), then the connection's
        publish bucket (:class:`RateLimited`; the connection stays open)."""
        self.security._check_caps(self._principal(), Operation.PUBLISH, topic)
        if self._bucket is not None:
            self.security._take(self._bucket, "ws")

    def check_subscribe(self, pattern: str, *, history: bool = False) -> None:
        """``subscribe`` on ``pattern``, and ``history`` too when the subscription replays
        stored events (``since``/``last``/``since_time``, ``hello.resume``)."""
        principal = self._principal()
        self.security._check_caps(principal, Operation.SUBSCRIBE, pattern)
        if history:
            self.security._check_caps(principal, Operation.HISTORY, pattern)

    def expired(self, now: float | None = None) -> bool:
        """Whether the principal's credential has expired (Unix time ``now``, default the
        security's wall clock); a sweep may close such connections with 4502."""
        principal = self.principal
        if principal is None:
            return False
        return principal.expired(self.security.wall_clock() if now is None else now)

    def limits(self) -> dict[str, Any]:
        """Entries for the ``limits`` object of the ``hello`` reply."""
        config = self.security.config
        if config.publish_rate <= 0:
            return {}
        return {
            "publish_rate": config.publish_rate,
            "publish_burst": config.effective_publish_burst,
        }

    def release(self) -> None:
        """Return the connection slot (call on disconnect; idempotent)."""
        slot, self._slot = self._slot, None
        if slot is not None and not slot.released:
            slot.release()
            self.security.stats.authenticated -= 1


def token_from_target(target: str) -> str | None:
    """The ``token`` query parameter of a request target, or ``None``.

    More than one ``token`` parameter is refused (:class:`Unauthorized`) rather than
    guessing which one counts.
    """
    if "?" not in target:
        return None
    try:
        query = urlsplit(target).query
        fields = parse_qs(query, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise Unauthorized("the URL query is malformed", reason="malformed") from None
    values = fields.get(TOKEN_QUERY_PARAM)
    if not values:
        return None
    if len(values) > 1:
        raise Unauthorized("more than one 'token' in the URL", reason="malformed")
    return values[0]
