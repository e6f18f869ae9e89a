"""API keys: minting, the config entry, verification and the constant-time path."""

from __future__ import annotations

import contextlib
import hmac
import tomllib

import pytest

from agentcast.security.apikeys import ApiKeyStore, hash_api_key, main, mint_api_key
from agentcast.security.capabilities import Operation
from agentcast.security.config import parse_security_config
from agentcast.security.errors import Unauthorized
from agentcast.security.principal import PrincipalKind


def test_minted_key_verifies_to_its_tenant_and_caps() -> None:
    minted = mint_api_key("acme", {"acme.run-1.>": ["publish"]})
    assert minted.key.startswith(f"ak_{minted.entry.key_id}_")
    assert minted.key not in minted.config_toml()
    assert minted.entry.hash == hash_api_key(minted.key)
    principal = ApiKeyStore([minted.entry]).verify(minted.key)
    assert principal.kind is PrincipalKind.API_KEY
    assert principal.tenant == "acme"
    assert principal.subject == f"ak_{minted.entry.key_id}"
    assert principal.expires_at is None
    assert principal.capabilities.allows(Operation.PUBLISH, "acme.run-1.chat")
    assert not principal.capabilities.allows(Operation.SUBSCRIBE, "acme.run-1.chat")
    assert not principal.capabilities.allows(Operation.PUBLISH, "globex.run-1.chat")


def test_two_mints_differ() -> None:
    a = mint_api_key("acme", {})
    b = mint_api_key("acme", {})
    assert a.key != b.key
    assert a.entry.key_id != b.entry.key_id


def test_the_printed_config_entry_is_valid_toml_the_node_accepts() -> None:
    minted = mint_api_key("acme", {"acme.>": ["publish", "subscribe"], "acme.audit": ["history"]})
    table = tomllib.loads(minted.config_toml())
    config = parse_security_config(table["security"])
    assert config.api_keys == (minted.entry,)
    principal = ApiKeyStore(config.api_keys).verify(minted.key)
    assert principal.capabilities.allows(Operation.HISTORY, "acme.audit")


def test_admin_key_may_hold_cross_tenant_patterns() -> None:
    with pytest.raises(ValueError, match="outside tenant"):
        mint_api_key("ops", {"*.audit": ["subscribe"]})
    minted = mint_api_key("ops", {"*.audit": ["subscribe"]}, admin=True)
    config = parse_security_config(tomllib.loads(minted.config_toml())["security"])
    principal = ApiKeyStore(config.api_keys).verify(minted.key)
    assert principal.admin
    assert principal.capabilities.allows(Operation.SUBSCRIBE, "globex.audit")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),
        lambda key: key + "x",
        lambda key: key[:-5],
        lambda key: key.replace("ak_", "AK_", 1),
        lambda key: "ak_ffffffffffff_" + key.split("_", 2)[2],
        lambda key: "",
        lambda key: "Bearer " + key,
        lambda key: key.upper(),
        lambda key: "x" * 5000,
    ],
)
def test_wrong_keys_are_refused(mutate: object) -> None:
    minted = mint_api_key("acme", {"acme.>": ["publish"]})
    store = ApiKeyStore([minted.entry])
    wrong = mutate(minted.key)  # type: ignore[operator]
    with pytest.raises(Unauthorized) as info:
        store.verify(wrong)
    assert info.value.code == "unauthorized"
    assert info.value.http_status == 401
    assert minted.key not in info.value.message


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(Unauthorized):
        ApiKeyStore([]).verify(None)


def test_every_path_hashes_and_compares_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known id, unknown id and malformed key all do one hash and one constant-time compare."""
    minted = mint_api_key("acme", {})
    store = ApiKeyStore([minted.entry])
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key_id, secret = minted.key.split("_", 2)[1:]
    attempts = [
        minted.key,
        f"ak_{key_id}_{'A' * len(secret)}",
        f"ak_000000000000_{secret}",
        "garbage",
    ]
    for attempt in attempts:
        calls.clear()
        with contextlib.suppress(Unauthorized):
            store.verify(attempt)
        assert len(calls) == 1, attempt
        presented_digest, expected = calls[0]
        assert presented_digest == hash_api_key(attempt)
        assert len(expected) == len(presented_digest)


def test_mint_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        mint_api_key("a.b", {})
    with pytest.raises(ValueError):
        mint_api_key("acme", {"acme.>": ["fly"]})
    with pytest.raises(ValueError):
        mint_api_key("acme", {}, key_id="bad_id")


def test_command_line_prints_the_key_and_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["--tenant", "acme", "--cap", "acme.>=publish,subscribe", "--cap", "acme.x=history"])
        == 0
    )
    out = capsys.readouterr().out
    key = next(line for line in out.splitlines() if line.startswith("ak_"))
    toml_text = out[out.index("[security.api_keys.") :]
    config = parse_security_config(tomllib.loads(toml_text)["security"])
    principal = ApiKeyStore(config.api_keys).verify(key)
    assert principal.capabilities.allows(Operation.SUBSCRIBE, "acme.y")
    assert principal.capabilities.allows(Operation.HISTORY, "acme.x")


def test_command_line_refuses_bad_caps(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--tenant", "acme", "--cap", "globex.>=publish"])
    assert info.value.code == 2
    assert "outside tenant" in capsys.readouterr().err
