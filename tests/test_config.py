from __future__ import annotations

from pathlib import Path

import pytest

from agentcast.config import ConfigError, load_config
from agentcast.protocol.commands import Policy


def test_defaults_need_no_file_or_environment() -> None:
    config = load_config(env={})
    assert (config.host, config.port, config.http_port) == ("127.0.0.1", 8765, 8766)
    assert config.hub.default_policy is Policy.DISCONNECT


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "agentcast.toml"
    path.write_text(
        'port = 9000\n[limits]\nmax_queue_messages = 10\ndefault_policy = "drop_oldest"\n'
    )
    env = {"AGENTCAST_PORT": "9100", "AGENTCAST_IDLE_TIMEOUT": "5"}
    config = load_config(path, env=env, overrides={"http_port": 9200, "host": None})
    assert (config.port, config.http_port) == (9100, 9200)
    assert config.hub.max_queue_messages == 10 and config.hub.idle_timeout == 5.0
    assert config.hub.default_policy is Policy.DROP_OLDEST


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("prot = 1\n", {}),
        ("port = 'abc'\n", {}),
        ("default_policy = 'explode'\n", {}),
        ("port = [\n", {}),
        ("", {"AGENTCAST_NOPE": "1"}),
    ],
)
def test_bad_config_is_refused_with_a_clear_error(
    tmp_path: Path, text: str, env: dict[str, str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert info.value.code == "bad_config"
