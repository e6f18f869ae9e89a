"""Bounds and defaults of a hub; every field is a config key (see docs/operations.md)."""

from __future__ import annotations

from dataclasses import dataclass

from agentcast.protocol.commands import Policy


@dataclass(slots=True, frozen=True)
class HubConfig:
    """Per-node limits. Sizes are bytes, times are seconds."""

    max_queue_messages: int = 1024
    max_queue_bytes: int = 1024 * 1024
    default_policy: Policy = Policy.DISCONNECT
    max_subscriptions: int = 256
    max_payload_bytes: int = 1024 * 1024
    max_topics: int = 100_000
    dedupe_window: float = 120.0
    max_dedupe_keys: int = 100_000
    heartbeat_interval: float = 25.0
    idle_timeout: float = 60.0
    max_recovery_buffer: int = 10_000
    replay_page: int = 500
    group_ack_timeout: float = 30.0
    group_max_deliver: int = 5
    group_max_in_flight: int = 16
