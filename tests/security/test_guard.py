"""The node's security front: upgrade, hello, per-command checks and HTTP, in each mode."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agentcast.errors import AlreadyHello, HelloRequired, ProtocolError
from agentcast.protocol.codes import should_reconnect
from agentcast.security.apikeys import mint_api_key
from agentcast.security.capabilities import Operation
from agentcast.security.config import parse_security_config
from agentcast.security.errors import (
    CLOSE_UNAUTHORIZED,
    Forbidden,
    OriginRefused,
    RateLimited,
    TooManyConnections,
    Unauthorized,
)
from agentcast.security.guard import Security, token_from_target
from agentcast.security.metrics import SecurityCollector
from agentcast.security.principal import PrincipalKind
from tests.security.support import HS_SECRET, NOW, claims, sign, write_self_signed


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(*, clock: FakeClock | None = None, **values: Any) -> Security:
    return Security(
        parse_security_config(values), clock=clock or FakeClock(), wall_clock=lambda: NOW
    )


def token(**overrides: Any) -> str:
    return sign(claims(**overrides), HS_SECRET, "HS256")


TOKEN_MODE: dict[str, Any] = {"auth": "token", "jwt_secrets": [HS_SECRET]}


# -- auth off -----------------------------------------------------------------------------


def test_auth_off_allows_everything_and_ignores_tokens() -> None:
    security = make()
    assert not security.enabled
    auth = security.admit_upgrade(None, "/v1/ws?token=garbage")
    principal = auth.hello("garbage")
    assert principal.kind is PrincipalKind.OPEN
    auth.check_publish("any.topic")
    auth.check_subscribe(">", history=True)
    assert security.limits.tracked == 0
    assert auth.limits() == {}


def test_auth_off_still_applies_origin_and_publish_rate() -> None:
    clock = FakeClock()
    security = make(clock=clock, allowed_origins=["https://app.example"], publish_rate=1)
    with pytest.raises(OriginRefused):
        security.admit_upgrade("https://evil.example")
    auth = security.admit_upgrade("https://app.example")
    auth.hello(None)
    auth.check_publish("acme.x")
    with pytest.raises(RateLimited):
        auth.check_publish("acme.x")
    clock.now += 1
    auth.check_publish("acme.x")
    assert auth.limits() == {"publish_rate": 1.0, "publish_burst": 1}


# -- token mode ---------------------------------------------------------------------------


def test_token_mode_needs_a_token() -> None:
    security = make(**TOKEN_MODE)
    auth = security.admit_upgrade(None, "/v1/ws")
    with pytest.raises(Unauthorized) as info:
        auth.hello(None)
    assert info.value.close_code == CLOSE_UNAUTHORIZED
    assert not should_reconnect(info.value.close_code)
    assert security.stats.auth_failures == {"missing": 1}


def test_hello_token_gives_the_principal_and_its_caps() -> None:
    security = make(**TOKEN_MODE)
    auth = security.admit_upgrade(None, "/v1/ws")
    principal = auth.hello(token())
    assert (principal.subject, principal.tenant) == ("planner-1", "acme")
    auth.check_publish("acme.run-42.agent.planner")
    auth.check_subscribe("acme.run-42.>")
    with pytest.raises(Forbidden) as info:
        auth.check_subscribe("acme.run-42.>", history=True)
    assert info.value.code == "forbidden"
    assert isinstance(info.value, ProtocolError)  # dispatch addresses the reply by id
    with pytest.raises(Forbidden, match="outside tenant"):
        auth.check_publish("globex.run-42.x")
    with pytest.raises(Forbidden, match="outside tenant"):
        auth.check_subscribe("*.>")
    with pytest.raises(Forbidden, match="no capability"):
        auth.check_subscribe("acme.>")
    assert security.stats.forbidden == {"history": 1, "publish": 1, "subscribe": 2}


def test_history_needs_both_subscribe_and_history() -> None:
    security = make(**TOKEN_MODE)
    auth = security.admit_upgrade(None)
    auth.hello(token(caps={"acme.log": ["history"], "acme.both": ["subscribe", "history"]}))
    with pytest.raises(Forbidden):
        auth.check_subscribe("acme.log", history=True)
    auth.check_subscribe("acme.both", history=True)
    auth.check(Operation.HISTORY, "acme.log")


def test_url_token_is_verified_at_the_upgrade() -> None:
    security = make(**TOKEN_MODE)
    with pytest.raises(Unauthorized) as info:
        security.admit_upgrade(None, "/v1/ws?token=forged")
    assert info.value.http_status == 401
    auth = security.admit_upgrade(None, f"/v1/ws?token={quote(token(sub='from-url'))}")
    assert auth.hello(None).subject == "from-url"


def test_a_url_token_that_expired_before_hello_is_refused() -> None:
    wall = FakeClock(NOW)
    security = Security(parse_security_config(TOKEN_MODE), clock=FakeClock(), wall_clock=wall)
    auth = security.admit_upgrade(None, f"/v1/ws?token={token(exp=NOW + 10)}")
    wall.now = NOW + 10
    with pytest.raises(Unauthorized, match="expired"):
        auth.hello(None)


def test_hello_token_wins_over_the_url_token() -> None:
    security = make(**TOKEN_MODE)
    auth = security.admit_upgrade(None, f"/v1/ws?token={token(sub='from-url')}")
    assert auth.hello(token(sub="from-hello")).subject == "from-hello"


def test_a_bad_hello_token_is_refused_even_with_a_good_url_token() -> None:
    security = make(**TOKEN_MODE)
    auth = security.admit_upgrade(None, f"/v1/ws?token={token()}")
    with pytest.raises(Unauthorized):
        auth.hello("forged")
    assert auth.principal is None


def test_commands_before_hello_and_a_second_hello() -> None:
    security = make(**TOKEN_MODE)
    auth = security.admit_upgrade(None)
    with pytest.raises(HelloRequired):
        auth.check_publish("acme.run-42.x")
    auth.hello(token())
    with pytest.raises(AlreadyHello):
        auth.hello(token())


def test_expiry_is_visible_for_a_sweep() -> None:
    security = make(**TOKEN_MODE)
    auth = security.admit_upgrade(None)
    assert not auth.expired()
    auth.hello(token(exp=NOW + 60))
    assert not auth.expired(NOW + 59)
    assert auth.expired(NOW + 60)


@pytest.mark.parametrize(
    "target",
    ["/v1/ws?token=a&token=b", "/v1/ws?" + "&".join(f"k{i}=v" for i in range(100))],
)
def test_ambiguous_or_oversized_url_queries_are_refused(target: str) -> None:
    with pytest.raises(Unauthorized):
        token_from_target(target)
    assert token_from_target("/v1/ws?other=1") is None
    assert token_from_target("/v1/ws") is None


# -- anonymous ----------------------------------------------------------------------------


def test_token_or_anonymous_gives_anonymous_caps_without_a_token() -> None:
    security = make(
        auth="token_or_anonymous",
        jwt_secrets=[HS_SECRET],
        anonymous_tenant="public",
        anonymous_caps={"public.news.>": ["subscribe"]},
        max_connections_per_tenant=2,
    )
    first = security.admit_upgrade(None)
    principal = first.hello(None)
    assert principal.kind is PrincipalKind.ANONYMOUS
    first.check_subscribe("public.news.today")
    with pytest.raises(Forbidden):
        first.check_publish("public.news.today")
    with pytest.raises(Forbidden):
        first.check_subscribe("acme.>")
    # A token, when given, must be valid: no silent fall-back to anonymous.
    with pytest.raises(Unauthorized):
        security.admit_upgrade(None).hello("forged")
    # Anonymous connections share the tenant's connection limit.
    security.admit_upgrade(None).hello(None)
    with pytest.raises(TooManyConnections):
        security.admit_upgrade(None).hello(None)
    first.release()
    security.admit_upgrade(None).hello(None)


# -- limits -------------------------------------------------------------------------------


def test_per_subject_limit_and_release() -> None:
    security = make(**TOKEN_MODE, max_connections_per_subject=1)
    first = security.admit_upgrade(None)
    first.hello(token())
    second = security.admit_upgrade(None)
    with pytest.raises(TooManyConnections) as info:
        second.hello(token())
    assert info.value.close_code is not None and should_reconnect(info.value.close_code)
    assert security.stats.connections_refused == {"subject_limit": 1}
    assert security.stats.authenticated == 1
    first.release()
    first.release()
    assert security.stats.authenticated == 0
    security.admit_upgrade(None).hello(token())


def test_node_wide_new_connection_rate() -> None:
    clock = FakeClock()
    security = make(clock=clock, new_connections_per_second=2)
    security.admit_upgrade(None)
    security.admit_upgrade(None)
    with pytest.raises(TooManyConnections) as info:
        security.admit_upgrade(None)
    assert info.value.reason == "node_rate"
    assert info.value.http_status == 429
    assert info.value.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    security.admit_upgrade(None)
    assert security.stats.connections_refused == {"node_rate": 1}


def test_a_refused_origin_spends_no_connection_token() -> None:
    security = make(new_connections_per_second=1, allowed_origins=["https://app.example"])
    for _ in range(3):
        with pytest.raises(OriginRefused):
            security.admit_upgrade("https://evil.example")
    security.admit_upgrade("https://app.example")
    assert security.stats.connections_refused == {"origin": 3}


def test_a_forbidden_publish_spends_no_rate_token() -> None:
    security = make(**TOKEN_MODE, publish_rate=1)
    auth = security.admit_upgrade(None)
    auth.hello(token())
    for _ in range(3):
        with pytest.raises(Forbidden):
            auth.check_publish("acme.elsewhere")
    auth.check_publish("acme.run-42.x")
    with pytest.raises(RateLimited) as info:
        auth.check_publish("acme.run-42.x")
    assert isinstance(info.value, ProtocolError)
    assert info.value.close_code is None
    assert security.stats.rate_limited == {"ws": 1}


# -- HTTP ---------------------------------------------------------------------------------


def test_http_api_keys() -> None:
    minted = mint_api_key("acme", {"acme.>": ["publish"]})
    api_keys = {
        minted.entry.key_id: {
            "hash": minted.entry.hash,
            "tenant": "acme",
            "caps": {"acme.>": ["publish"]},
        }
    }
    security = make(**TOKEN_MODE, api_keys=api_keys, publish_rate=1)
    principal = security.authenticate_http(f"Bearer {minted.key}")
    security.check_http(principal, Operation.PUBLISH, "acme.x")
    with pytest.raises(RateLimited):
        security.check_http(principal, Operation.PUBLISH, "acme.x")
    with pytest.raises(Forbidden):
        security.check_http(principal, Operation.PUBLISH, "globex.x")
    assert security.authenticate_http(f"bearer   {minted.key}  ").subject == principal.subject
    for header in (None, "", f"Basic {minted.key}", "Bearer", "Bearer ak_0000_x", minted.key):
        with pytest.raises(Unauthorized):
            security.authenticate_http(header)
    assert security.stats.rate_limited == {"http": 1}


def test_http_without_a_key_is_anonymous_only_in_anonymous_mode() -> None:
    security = make(
        auth="token_or_anonymous",
        anonymous_tenant="public",
        anonymous_caps={"public.>": ["publish"]},
    )
    principal = security.authenticate_http(None)
    assert principal.kind is PrincipalKind.ANONYMOUS
    security.check_http(principal, Operation.PUBLISH, "public.x")
    with pytest.raises(Unauthorized):
        security.authenticate_http("Bearer wrong")
    assert make().authenticate_http("Bearer whatever").kind is PrincipalKind.OPEN


def test_verify_token_without_keys() -> None:
    security = make(auth="token_or_anonymous", anonymous_tenant="public")
    with pytest.raises(Unauthorized):
        security.admit_upgrade(None).hello(token())
    assert security.stats.auth_failures == {"no_keys": 1}


# -- metrics and TLS ----------------------------------------------------------------------


def test_collector_exports_the_counters() -> None:
    security = make(**TOKEN_MODE, allowed_origins=["https://app.example"])
    with pytest.raises(OriginRefused):
        security.admit_upgrade("https://evil.example")
    with pytest.raises(Unauthorized):
        security.admit_upgrade(None).hello("forged")
    security.admit_upgrade(None).hello(token())
    registry = CollectorRegistry()
    registry.register(SecurityCollector(security))
    text = generate_latest(registry).decode()
    assert 'agentcast_connections_refused_total{reason="origin"} 1.0' in text
    assert 'agentcast_auth_failures_total{reason="malformed"} 1.0' in text
    assert "agentcast_authenticated_connections 1.0" in text


def test_tls_context_only_when_configured(tmp_path: Path) -> None:
    assert make().ssl_context() is None
    cert, key = write_self_signed(tmp_path)
    context = make(tls_cert=str(cert), tls_key=str(key)).ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
