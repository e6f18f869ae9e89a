"""Connection tokens: what is accepted, and every forgery that must be refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest

from agentcast.config import ConfigError
from agentcast.security.capabilities import Operation
from agentcast.security.config import parse_security_config
from agentcast.security.errors import Unauthorized
from agentcast.security.principal import PrincipalKind
from agentcast.security.tokens import TokenVerifier
from tests.security.support import (
    HS_SECRET,
    NOW,
    OTHER_HS_SECRET,
    KeyPair,
    b64url,
    claims,
    raw_token,
    sign,
)


def verifier(clock: float = NOW, **security: Any) -> TokenVerifier:
    values: dict[str, Any] = {"auth": "token"}
    values.update(security)
    return TokenVerifier.from_config(parse_security_config(values), clock=lambda: clock)


def hs_verifier(**security: Any) -> TokenVerifier:
    return verifier(jwt_secrets=[HS_SECRET], **security)


def refused(v: TokenVerifier, token: object, reason: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        v.verify(token)
    assert info.value.code == "unauthorized"
    assert info.value.reason == reason, info.value.message
    assert HS_SECRET not in info.value.message
    if isinstance(token, str) and len(token) > 8:
        assert token not in info.value.message
    return info.value


# -- accepted ---------------------------------------------------------------------------


def test_valid_hs256_token_gives_its_principal() -> None:
    principal = hs_verifier().verify(sign(claims(), HS_SECRET, "HS256"))
    assert principal.subject == "planner-1"
    assert principal.tenant == "acme"
    assert principal.expires_at == NOW + 3600
    assert principal.kind is PrincipalKind.TOKEN
    assert not principal.admin
    caps = principal.capabilities
    assert caps.allows(Operation.PUBLISH, "acme.run-42.chat")
    assert caps.allows(Operation.SUBSCRIBE, "acme.run-42.>")
    assert not caps.allows(Operation.HISTORY, "acme.run-42.chat")
    assert not caps.allows(Operation.PUBLISH, "acme.run-43.chat")


def test_any_of_several_hs256_secrets_verifies_for_rotation() -> None:
    v = verifier(jwt_secrets=[OTHER_HS_SECRET, HS_SECRET])
    assert v.verify(sign(claims(), HS_SECRET, "HS256")).subject == "planner-1"
    assert v.verify(sign(claims(), OTHER_HS_SECRET, "HS256")).subject == "planner-1"


def test_valid_rs256_token(rsa_key: KeyPair) -> None:
    v = verifier(jwt_public_keys=[{"alg": "RS256", "pem": rsa_key.public_pem}])
    assert v.verify(sign(claims(), rsa_key.private, "RS256")).tenant == "acme"


def test_valid_es256_token(ec_key: KeyPair) -> None:
    v = verifier(jwt_public_keys=[{"alg": "ES256", "pem": ec_key.public_pem}])
    assert v.verify(sign(claims(), ec_key.private, "ES256")).tenant == "acme"


def test_public_key_read_from_a_pem_file(tmp_path: Path, ec_key: KeyPair) -> None:
    path = tmp_path / "issuer.pem"
    path.write_text(ec_key.public_pem)
    v = verifier(jwt_public_keys=[{"alg": "ES256", "file": str(path), "kid": "e1"}])
    assert v.verify(sign(claims(), ec_key.private, "ES256", kid="e1")).tenant == "acme"


def _jwks(tmp_path: Path, *entries: tuple[KeyPair, str, str]) -> str:
    keys = []
    for pair, kid, alg in entries:
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(pair.private))
        public = {k: v for k, v in jwk.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}
        keys.append({**public, "kid": kid, "alg": alg, "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return str(path)


def test_jwks_file_selects_the_key_by_kid(
    tmp_path: Path, rsa_key: KeyPair, other_rsa_key: KeyPair, ec_key: KeyPair
) -> None:
    path = _jwks(
        tmp_path, (rsa_key, "r1", "RS256"), (other_rsa_key, "r2", "RS256"), (ec_key, "e1", "ES256")
    )
    v = verifier(jwks_file=path)
    assert len(v.keys) == 3
    assert v.verify(sign(claims(sub="a"), rsa_key.private, "RS256", kid="r1")).subject == "a"
    assert v.verify(sign(claims(sub="b"), other_rsa_key.private, "RS256", kid="r2")).subject == "b"
    assert v.verify(sign(claims(sub="c"), ec_key.private, "ES256", kid="e1")).subject == "c"
    # The kid pins the key: r1's kid on a token signed by r2 does not verify.
    refused(v, sign(claims(), other_rsa_key.private, "RS256", kid="r1"), "signature")
    refused(v, sign(claims(), rsa_key.private, "RS256", kid="nope"), "unknown_key")
    # A kid whose key has another algorithm.
    refused(v, sign(claims(), ec_key.private, "ES256", kid="r1"), "algorithm")


def test_jwks_file_with_hmac_and_inferred_algorithms_skips_unsupported_keys(
    tmp_path: Path, rsa_key: KeyPair
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.private.public_key()))
    ed_jwk = json.loads(
        jwt.algorithms.OKPAlgorithm.to_jwk(ed25519.Ed25519PrivateKey.generate().public_key())
    )
    oct_jwk = {"kty": "oct", "k": b64url(HS_SECRET.encode()), "kid": "h1", "alg": "HS256"}
    path = tmp_path / "jwks.json"
    keys = [{**rsa_jwk, "kid": "r1"}, {**ed_jwk, "kid": "ed", "alg": "EdDSA"}, oct_jwk]
    path.write_text(json.dumps({"keys": keys}))
    v = verifier(jwks_file=str(path))
    assert sorted((key.kid, key.alg) for key in v.keys) == [("h1", "HS256"), ("r1", "RS256")]
    assert v.verify(sign(claims(), HS_SECRET, "HS256", kid="h1")).tenant == "acme"
    assert v.verify(sign(claims(), rsa_key.private, "RS256", kid="r1")).tenant == "acme"
    refused(v, sign(claims(), HS_SECRET, "HS256", kid="r1"), "algorithm")


@pytest.mark.parametrize(
    "document",
    [
        {"keys": [{"kty": "oct", "kid": "h"}]},
        {"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]},
        {"keys": [{"kty": "EC", "crv": "P-256"}]},
        {"keys": ["not an object"]},
        {"keys": {}},
        [],
    ],
)
def test_malformed_jwks_files_are_config_errors(tmp_path: Path, document: object) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="jwks_file"):
        verifier(jwks_file=str(path))


def test_jwks_file_skips_encryption_keys_and_needs_one_signing_key(
    tmp_path: Path, rsa_key: KeyPair
) -> None:
    path = Path(_jwks(tmp_path, (rsa_key, "r1", "RS256")))
    document = json.loads(path.read_text())
    document["keys"][0]["use"] = "enc"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="no usable signing key"):
        verifier(jwks_file=str(path))


def test_expired_within_leeway_is_accepted() -> None:
    token = sign(claims(exp=NOW - 10), HS_SECRET, "HS256")
    assert hs_verifier(jwt_leeway=30).verify(token).subject == "planner-1"
    refused(hs_verifier(jwt_leeway=5), token, "expired")


def test_audience_and_issuer_when_configured() -> None:
    v = hs_verifier(jwt_audience=["agentcast", "other"], jwt_issuer="https://auth.example")
    token = sign(claims(aud=["x", "agentcast"], iss="https://auth.example"), HS_SECRET, "HS256")
    assert v.verify(token).tenant == "acme"


def test_admin_token_only_when_allowed() -> None:
    token = sign(claims(admin=True, caps={"*.audit": ["subscribe"]}), HS_SECRET, "HS256")
    refused(hs_verifier(), token, "admin")
    principal = hs_verifier(allow_admin_tokens=True).verify(token)
    assert principal.admin
    assert principal.capabilities.allows(Operation.SUBSCRIBE, "globex.audit")


# -- refused ----------------------------------------------------------------------------


def test_forged_signature_is_refused() -> None:
    token = sign(claims(), HS_SECRET, "HS256")
    header, _, signature = token.split(".")
    forged_payload = b64url(json.dumps(claims(tenant="globex")).encode())
    refused(hs_verifier(), f"{header}.{forged_payload}.{signature}", "signature")


def test_token_signed_with_an_unknown_secret_is_refused() -> None:
    refused(hs_verifier(), sign(claims(), OTHER_HS_SECRET, "HS256"), "signature")


def test_token_signed_with_the_wrong_rsa_key_is_refused(
    rsa_key: KeyPair, other_rsa_key: KeyPair
) -> None:
    v = verifier(jwt_public_keys=[{"alg": "RS256", "pem": rsa_key.public_pem}])
    refused(v, sign(claims(), other_rsa_key.private, "RS256"), "signature")


def test_expired_token_is_refused() -> None:
    refused(hs_verifier(jwt_leeway=0), sign(claims(exp=NOW), HS_SECRET, "HS256"), "expired")


def test_not_yet_valid_token_is_refused() -> None:
    v = hs_verifier(jwt_leeway=10)
    refused(v, sign(claims(nbf=NOW + 60), HS_SECRET, "HS256"), "not_yet_valid")
    assert v.verify(sign(claims(nbf=NOW + 5), HS_SECRET, "HS256")).tenant == "acme"


@pytest.mark.parametrize("aud", ["someone-else", ["a", "b"]])
def test_wrong_audience_is_refused(aud: object) -> None:
    v = hs_verifier(jwt_audience="agentcast")
    refused(v, sign(claims(aud=aud), HS_SECRET, "HS256"), "audience")


def test_missing_audience_is_refused_when_one_is_configured() -> None:
    refused(hs_verifier(jwt_audience="agentcast"), sign(claims(), HS_SECRET, "HS256"), "audience")


def test_token_with_an_audience_is_refused_when_none_is_configured() -> None:
    refused(hs_verifier(), sign(claims(aud="agentcast"), HS_SECRET, "HS256"), "audience")


@pytest.mark.parametrize("iss", ["https://evil.example", None, ["https://auth.example"]])
def test_wrong_or_missing_issuer_is_refused(iss: object) -> None:
    v = hs_verifier(jwt_issuer="https://auth.example")
    refused(v, raw_token({"alg": "HS256"}, claims(iss=iss), HS_SECRET.encode()), "issuer")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
def test_alg_none_is_refused(alg: str) -> None:
    token = raw_token({"alg": alg, "typ": "JWT"}, claims(), None)
    refused(hs_verifier(), token, "algorithm")


def test_alg_none_with_a_signature_is_still_refused() -> None:
    token = raw_token({"alg": "none"}, claims(), HS_SECRET.encode())
    refused(hs_verifier(), token, "algorithm")


@pytest.mark.parametrize("alg", ["HS512", "RS512", "PS256", "EdDSA", "ES384"])
def test_unsupported_algorithms_are_refused(alg: str) -> None:
    token = raw_token({"alg": alg}, claims(), HS_SECRET.encode())
    refused(hs_verifier(), token, "algorithm")


def test_hs256_token_signed_with_the_rsa_public_key_is_refused(rsa_key: KeyPair) -> None:
    """The classic key confusion: the public key PEM used as an HMAC secret."""
    token = raw_token({"alg": "HS256", "typ": "JWT"}, claims(), rsa_key.public_pem.encode())
    only_rsa = verifier(jwt_public_keys=[{"alg": "RS256", "pem": rsa_key.public_pem}])
    refused(only_rsa, token, "algorithm")
    both = verifier(
        jwt_secrets=[HS_SECRET], jwt_public_keys=[{"alg": "RS256", "pem": rsa_key.public_pem}]
    )
    refused(both, token, "signature")
    by_kid = verifier(jwt_public_keys=[{"alg": "RS256", "pem": rsa_key.public_pem, "kid": "r"}])
    kid_token = raw_token({"alg": "HS256", "kid": "r"}, claims(), rsa_key.public_pem.encode())
    refused(by_kid, kid_token, "algorithm")


def test_rs256_token_is_refused_by_a_node_with_only_hs_secrets(rsa_key: KeyPair) -> None:
    refused(hs_verifier(), sign(claims(), rsa_key.private, "RS256"), "algorithm")


def test_key_embedded_in_the_token_header_is_ignored(
    rsa_key: KeyPair, other_rsa_key: KeyPair
) -> None:
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(other_rsa_key.private))
    attacker_jwk = {k: attacker_jwk[k] for k in ("kty", "n", "e")}
    token = sign(claims(), other_rsa_key.private, "RS256", jwk=attacker_jwk)
    v = verifier(jwt_public_keys=[{"alg": "RS256", "pem": rsa_key.public_pem}])
    refused(v, token, "signature")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"tenant": None}, "claims"),
        ({"tenant": ""}, "claims"),
        ({"tenant": "acme.sub"}, "claims"),
        ({"tenant": "*"}, "claims"),
        ({"tenant": ">"}, "claims"),
        ({"tenant": 7}, "claims"),
        ({"sub": None}, "claims"),
        ({"sub": ""}, "claims"),
        ({"exp": None}, "claims"),
        ({"exp": "9999999999"}, "claims"),
        ({"exp": True}, "claims"),
        ({"exp": float("nan")}, "claims"),
        ({"exp": 10**400}, "claims"),
        ({"nbf": "soon"}, "claims"),
        ({"admin": "yes"}, "claims"),
        ({"caps": ["acme.>"]}, "claims"),
        ({"caps": {"acme.>": ["publish", "delete"]}}, "claims"),
        ({"caps": {"acme.>": "publish"}}, "claims"),
        ({"caps": {"globex.>": ["publish"]}}, "claims"),
        ({"caps": {"*.>": ["subscribe"]}}, "claims"),
        ({"caps": {"acme..x": ["publish"]}}, "claims"),
    ],
)
def test_bad_claims_are_refused(overrides: dict[str, Any], reason: str) -> None:
    token = raw_token({"alg": "HS256"}, claims(**overrides), HS_SECRET.encode())
    refused(hs_verifier(), token, reason)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-jwt",
        "a.b",
        "a.b.c",
        "x" * 9000,
        42,
        None,
    ],
)
def test_malformed_tokens_are_refused(token: object) -> None:
    refused(hs_verifier(), token, "malformed")


def test_crit_and_b64_headers_are_refused() -> None:
    for header in ({"alg": "HS256", "crit": ["exp"]}, {"alg": "HS256", "b64": False}):
        refused(hs_verifier(), raw_token(header, claims(), HS_SECRET.encode()), "malformed")


def test_payload_that_is_not_an_object_is_refused() -> None:
    token = jwt.api_jws.encode(b"[1, 2]", HS_SECRET, algorithm="HS256")
    refused(hs_verifier(), token, "malformed")


# -- configuration ----------------------------------------------------------------------


def test_public_key_of_the_wrong_type_is_a_config_error(rsa_key: KeyPair, ec_key: KeyPair) -> None:
    with pytest.raises(ConfigError, match="ES256 needs a P-256 public key"):
        verifier(jwt_public_keys=[{"alg": "ES256", "pem": rsa_key.public_pem}])
    with pytest.raises(ConfigError, match="RS256 needs an RSA public key"):
        verifier(jwt_public_keys=[{"alg": "RS256", "pem": ec_key.public_pem}])


def test_private_key_pem_is_a_config_error_that_does_not_echo_it(rsa_key: KeyPair) -> None:
    from cryptography.hazmat.primitives import serialization

    private_pem = rsa_key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ConfigError) as info:
        verifier(jwt_public_keys=[{"alg": "RS256", "pem": private_pem}])
    assert "PRIVATE" not in str(info.value)


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        verifier(jwks_file=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="cannot read"):
        verifier(jwt_public_keys=[{"alg": "RS256", "file": str(tmp_path / "missing.pem")}])


def test_duplicate_kid_across_sources_is_a_config_error(
    tmp_path: Path, rsa_key: KeyPair, ec_key: KeyPair
) -> None:
    path = _jwks(tmp_path, (rsa_key, "k", "RS256"))
    with pytest.raises(ConfigError, match="more than one key"):
        verifier(
            jwks_file=path, jwt_public_keys=[{"alg": "ES256", "pem": ec_key.public_pem, "kid": "k"}]
        )
