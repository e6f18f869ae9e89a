"""Node configuration: defaults, then a TOML file, then ``AGENTCAST_*`` environment variables,
then command-line flags (each later source wins).

Every key is documented in docs/operations.md. Unknown keys are refused so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agentcast.errors import AgentcastError
from agentcast.hub.config import HubConfig
from agentcast.hub.durability import DurableRule, GapPolicy
from agentcast.protocol.commands import Policy
from agentcast.security.config import SECURITY_KEYS, SecurityConfig, parse_security_config

ENV_PREFIX = "AGENTCAST_"


class ConfigError(AgentcastError):
    code = "bad_config"


@dataclass(slots=True, frozen=True)
class ServerConfig:
    """Everything ``agentcast serve`` needs; ``hub`` holds the per-connection bounds."""

    host: str = "127.0.0.1"
    port: int = 8765
    http_port: int = 8766
    node_id: str = ""
    max_frame_bytes: int = 1024 * 1024 + 64 * 1024
    shutdown_grace: float = 5.0
    log_level: str = "info"
    history: str = "sqlite:///agentcast-data/history.db"
    retention_interval: float = 30.0
    broker: str = ""
    cluster_heartbeat: float = 1.0
    member_timeout: float = 3.0
    durable: tuple[DurableRule, ...] = ()
    workflows: str = ""
    workflows_db: str = "sqlite:///agentcast-data/workflows.db"
    workflows_token: str = ""
    security: SecurityConfig = field(default_factory=SecurityConfig)
    hub: HubConfig = field(default_factory=HubConfig)


def parse_durable(value: Any) -> tuple[DurableRule, ...]:
    """Durable rules from a list of patterns, a list of tables, or a comma-separated string.

    A table has ``pattern`` and optionally ``max_events``, ``max_age`` (seconds),
    ``on_gap`` (``from_now``, ``snapshot``, ``refuse``) and ``snapshot_key``.
    """
    from agentcast.protocol.topics import validate_pattern

    items = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError("'durable' must be a list of patterns or tables")
    rules: list[DurableRule] = []
    for item in items:
        table = {"pattern": item} if isinstance(item, str) else item
        if not isinstance(table, dict) or "pattern" not in table:
            raise ConfigError("each 'durable' entry needs a 'pattern'")
        unknown = set(table) - {"pattern", "max_events", "max_age", "on_gap", "snapshot_key"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in a 'durable' entry")
        try:
            rules.append(
                DurableRule(
                    pattern=validate_pattern(table["pattern"]),
                    max_events=int(table.get("max_events", 10_000)),
                    max_age=None if table.get("max_age") is None else float(table["max_age"]),
                    on_gap=GapPolicy(table.get("on_gap", "from_now")),
                    snapshot_key=str(table.get("snapshot_key", "key")),
                )
            )
        except (ValueError, AgentcastError) as exc:
            raise ConfigError(f"bad 'durable' entry {table!r}: {exc}") from None
    return tuple(rules)


def _coerce(name: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return value.strip().lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if isinstance(default, Policy):
            return Policy(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except ValueError as exc:
        raise ConfigError(f"config key {name!r}: {exc}") from None


def _apply(config: ServerConfig, values: Mapping[str, Any], origin: str) -> ServerConfig:
    top = {f.name: f for f in fields(ServerConfig) if f.name not in ("hub", "durable", "security")}
    hub_fields = {f.name: f for f in fields(HubConfig)}
    top_changes: dict[str, Any] = {}
    hub_changes: dict[str, Any] = {}
    security_changes: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key == "security":
            if not isinstance(value, dict):
                raise ConfigError(f"'security' must be a table in {origin}")
            security_changes.update(value)
        elif key.startswith("security_") and key[len("security_") :] in SECURITY_KEYS:
            security_changes[key[len("security_") :]] = value
        elif key == "durable":
            top_changes[key] = parse_durable(value)
        elif key in top:
            top_changes[key] = _coerce(key, value, getattr(config, key))
        elif key in hub_fields:
            hub_changes[key] = _coerce(key, value, getattr(config.hub, key))
        else:
            raise ConfigError(f"unknown config key {key!r} in {origin}")
    hub = replace(config.hub, **hub_changes) if hub_changes else config.hub
    if security_changes:
        top_changes["security"] = parse_security_config(security_changes, config.security)
    return replace(config, hub=hub, **top_changes)


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Accept both flat keys and a ``[limits]``/``[server]`` table layout."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("durable", "security"):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Build a :class:`ServerConfig` from a TOML file, the environment and overrides."""
    config = ServerConfig()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        config = _apply(config, _flatten(data), str(path))
    environ = os.environ if env is None else env
    from_env = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key != f"{ENV_PREFIX}CONFIG"
    }
    config = _apply(config, from_env, "the environment")
    if overrides:
        config = _apply(config, overrides, "the command line")
    return config
