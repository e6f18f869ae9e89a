"""The [security] table: parsing from TOML and from environment strings, and its errors."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from typing import Any

import pytest

from agentcast.config import ConfigError
from agentcast.security import config as security_config
from agentcast.security.config import (
    SECURITY_KEYS,
    AuthMode,
    SecurityConfig,
    parse_security_config,
)
from tests.security.support import HS_SECRET

TOML = f"""
[security]
auth = "token_or_anonymous"
anonymous_tenant = "public"
anonymous_caps = {{ "public.>" = ["subscribe"] }}
jwt_secrets = ["{HS_SECRET}"]
jwt_audience = "agentcast"
jwt_issuer = ["https://auth.example"]
jwt_leeway = 5
allowed_origins = ["https://app.example.com", "http://localhost:3000"]
allow_missing_origin = false
publish_rate = 50
publish_burst = 100
max_connections_per_tenant = 1000
max_connections_per_subject = 10
new_connections_per_second = 200.5
tls_cert = "/etc/agentcast/cert.pem"
tls_key = "/etc/agentcast/key.pem"

[[security.jwt_public_keys]]
alg = "RS256"
file = "/etc/agentcast/issuer.pem"
kid = "2024-01"
"""


def test_defaults_change_nothing() -> None:
    config = parse_security_config({})
    assert config == SecurityConfig()
    assert config.auth is AuthMode.OFF
    assert config.allowed_origins == ("*",)
    assert config.allow_missing_origin
    assert config.publish_rate == 0 and config.max_connections_per_tenant == 0
    assert config.tls_cert is None


def test_full_toml_table() -> None:
    config = parse_security_config(tomllib.loads(TOML)["security"])
    assert config.auth is AuthMode.TOKEN_OR_ANONYMOUS
    assert config.anonymous_tenant == "public"
    assert config.anonymous_caps == (("public.>", ("subscribe",)),)
    assert config.jwt_secrets == (HS_SECRET,)
    assert config.jwt_audience == ("agentcast",)
    assert config.jwt_issuer == ("https://auth.example",)
    assert config.jwt_leeway == 5.0
    assert config.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert not config.allow_missing_origin
    assert (config.publish_rate, config.publish_burst) == (50.0, 100)
    assert config.max_connections_per_tenant == 1000
    assert config.max_connections_per_subject == 10
    assert config.new_connections_per_second == 200.5
    assert config.jwt_public_keys[0].kid == "2024-01"
    assert config.jwt_public_keys[0].file == "/etc/agentcast/issuer.pem"
    assert config.tls_cert == "/etc/agentcast/cert.pem"


def test_environment_strings_layer_over_a_base() -> None:
    base = parse_security_config({"publish_rate": 5})
    env = {
        "auth": "token",
        "jwt_secrets": f"{HS_SECRET},{HS_SECRET}x",
        "allowed_origins": "https://A.example.com:443, http://b.example.com",
        "allow_missing_origin": "no",
        "max_connections_per_tenant": "7",
        "jwt_leeway": "1.5",
        "allow_admin_tokens": "true",
        "api_keys": '{"abcd1234": {"hash": "sha256:' + "0" * 64 + '", "tenant": "acme"}}',
        "anonymous_caps": None,
    }
    config = parse_security_config(env, base)
    assert config.publish_rate == 5.0
    assert config.auth is AuthMode.TOKEN
    assert len(config.jwt_secrets) == 2
    assert config.allowed_origins == ("https://a.example.com", "http://b.example.com")
    assert config.allow_missing_origin is False
    assert config.max_connections_per_tenant == 7
    assert config.jwt_leeway == 1.5
    assert config.allow_admin_tokens is True
    assert config.api_keys[0].tenant == "acme" and config.api_keys[0].caps == ()


def test_burst_defaults_to_the_rate() -> None:
    assert parse_security_config({"publish_rate": 2.5}).effective_publish_burst == 3
    assert parse_security_config({"publish_rate": 0.2}).effective_publish_burst == 1
    assert (
        parse_security_config({"publish_rate": 1, "publish_burst": 9}).effective_publish_burst == 9
    )


def test_every_field_has_a_parser() -> None:
    assert (
        set(security_config._PARSERS) == SECURITY_KEYS == {f.name for f in fields(SecurityConfig)}
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth": "maybe"}, "auth: must be one of"),
        ({"color": "blue"}, "unknown key 'color'"),
        ({"auth": "token"}, "needs jwt_secrets"),
        ({"auth": "token_or_anonymous"}, "needs anonymous_tenant"),
        ({"anonymous_caps": {"public.>": ["subscribe"]}}, "needs anonymous_tenant"),
        (
            {"anonymous_tenant": "public", "anonymous_caps": {"acme.>": ["subscribe"]}},
            "outside anonymous_tenant",
        ),
        ({"anonymous_tenant": "a.b"}, "anonymous_tenant"),
        ({"anonymous_caps": {"public.>": ["fly"]}}, "unknown operation"),
        ({"jwt_secrets": ["short"]}, "at least 32 bytes"),
        ({"jwt_secrets": ["-----BEGIN PUBLIC KEY-----" + "A" * 64]}, "not an HMAC secret"),
        ({"jwt_secrets": [1, 2]}, "list of strings"),
        ({"jwt_public_keys": [{"alg": "HS256", "pem": "x"}]}, "'alg' must be one of"),
        ({"jwt_public_keys": [{"alg": "RS256"}]}, "exactly one of 'pem' and 'file'"),
        ({"jwt_public_keys": [{"alg": "RS256", "pem": "x", "file": "y"}]}, "exactly one"),
        ({"jwt_public_keys": [{"alg": "RS256", "pem": "x", "url": "y"}]}, "unknown key"),
        (
            {
                "jwt_public_keys": [
                    {"alg": "RS256", "pem": "x", "kid": "k"},
                    {"alg": "ES256", "pem": "y", "kid": "k"},
                ]
            },
            "share a 'kid'",
        ),
        ({"jwt_public_keys": "not json"}, "not valid JSON"),
        ({"jwks_file": ""}, "non-empty path"),
        ({"jwt_leeway": -1}, ">= 0"),
        ({"jwt_leeway": "inf"}, "finite"),
        ({"publish_rate": "fast"}, "publish_rate"),
        ({"publish_rate": True}, "must be a number"),
        ({"publish_burst": 1.5}, "integer"),
        ({"max_connections_per_tenant": -3}, ">= 0"),
        ({"allow_missing_origin": "perhaps"}, "true or false"),
        ({"allowed_origins": ["example.com"]}, "is not an origin"),
        ({"allowed_origins": ["https://*.example.com"]}, "is not an origin"),
        ({"tls_cert": "/x.pem"}, "must be set together"),
        ({"api_keys": {"ab": {}}}, "4-64 letters"),
        ({"api_keys": {"abcd": {"hash": "md5:x", "tenant": "a"}}}, "'hash' must be"),
        ({"api_keys": {"abcd": {"hash": "sha256:" + "0" * 64}}}, "tenant"),
        (
            {"api_keys": {"abcd": {"hash": "sha256:" + "0" * 64, "tenant": "a", "x": 1}}},
            "unknown key",
        ),
        (
            {
                "api_keys": {
                    "abcd": {"hash": "sha256:" + "0" * 64, "tenant": "a", "caps": {"b.>": []}}
                }
            },
            "outside tenant",
        ),
    ],
)
def test_errors_name_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_security_config(values)
    assert info.value.code == "bad_config"


def test_secrets_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_security_config({"jwt_secrets": ["tiny-secret-value"]})
    assert "tiny-secret-value" not in str(info.value)


def test_not_a_table() -> None:
    with pytest.raises(ConfigError):
        parse_security_config(["auth"])  # type: ignore[arg-type]
