"""The Origin allowlist: exact matches after normalisation, and the usual bypass tricks."""

from __future__ import annotations

import pytest

from agentcast.security.errors import OriginRefused
from agentcast.security.origin import OriginPolicy, normalize_origin

ALLOWLIST = ["https://example.com", "http://localhost:3000", "https://[::1]:8443"]


@pytest.fixture
def policy() -> OriginPolicy:
    return OriginPolicy(ALLOWLIST)


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",
        "HTTPS://EXAMPLE.COM",
        "https://Example.Com",
        "https://example.com:443",
        "http://localhost:3000",
        "http://LOCALHOST:3000",
        "https://[::1]:8443",
    ],
)
def test_listed_origins_pass_after_normalisation(policy: OriginPolicy, origin: str) -> None:
    assert policy.allows(origin)
    policy.check(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil-example.com",
        "https://example.com.evil.net",
        "https://evilexample.com",
        "https://sub.example.com",
        "https://example.co",
        "https://example.com.",
        "http://example.com",
        "https://example.com:8443",
        "wss://example.com",
        "https://example.com@evil.net",
        "https://evil.net@example.com",
        "https://evil.net#https://example.com",
        "https://evil.net?https://example.com",
        "https://example.com/",
        "https://example.com/path",
        "https://example.com%2eevil.net",
        "https://example.com\t",
        " https://example.com",
        "https://example.com ",
        "https://exa mple.com",
        "https://éxample.com",
        "null",
        "",
        "example.com",
        "//example.com",
        "https://",
        "https://example.com:99999",
        "https://example.com:abc",
        "http://localhost:3001",
        "http://localhost",
        "https://localhost:3000",
        "http://127.0.0.1:3000",
        "https://[::2]:8443",
        "file://example.com",
        "https://example.com\\@evil.net",
        "x" * 2000,
    ],
)
def test_lookalikes_and_malformed_origins_are_refused(policy: OriginPolicy, origin: str) -> None:
    assert not policy.allows(origin)
    with pytest.raises(OriginRefused) as info:
        policy.check(origin)
    assert info.value.code == "origin_not_allowed"
    assert info.value.http_status == 403


def test_missing_origin_is_allowed_unless_configured_otherwise() -> None:
    assert OriginPolicy(ALLOWLIST).allows(None)
    strict = OriginPolicy(ALLOWLIST, allow_missing=False)
    assert not strict.allows(None)
    with pytest.raises(OriginRefused):
        strict.check(None)


def test_star_allows_any_origin_but_not_a_missing_one_when_required() -> None:
    any_origin = OriginPolicy(["*"], allow_missing=False)
    assert any_origin.allows("https://anything.example")
    assert any_origin.allows("null")
    assert not any_origin.allows(None)


def test_empty_allowlist_refuses_every_browser() -> None:
    nobody = OriginPolicy([])
    assert not nobody.allows("https://example.com")
    assert nobody.allows(None)


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("https://Example.COM:443", "https://example.com"),
        ("http://example.com:80", "http://example.com"),
        ("http://example.com:443", "http://example.com:443"),
        ("https://example.com:80", "https://example.com:80"),
        ("https://[::1]", "https://[::1]"),
        ("https://[0:0::1]:443", "https://[0:0::1]"),
    ],
)
def test_normalisation(raw: str, normal: str) -> None:
    assert normalize_origin(raw) == normal


def test_a_trailing_slash_is_tolerated_in_config_only() -> None:
    assert normalize_origin("https://example.com/") is None
    assert normalize_origin("https://example.com/", allow_trailing_slash=True) == (
        "https://example.com"
    )
    assert OriginPolicy(["https://example.com/"]).allows("https://example.com")


@pytest.mark.parametrize("entry", ["example.com", "https://*.example.com", "null", "https://a/b"])
def test_invalid_allowlist_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        OriginPolicy([entry])
