"""Shared fixtures: a real node on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, settings

from agentcast.config import ServerConfig
from agentcast.hub.config import HubConfig
from agentcast.node import Node

# The machine is shared and noisy: never fail a property test for being slow.
settings.register_profile("agentcast", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("agentcast")


@pytest.fixture
def hub_config() -> HubConfig:
    """Override in a test module to change the node's limits."""
    return HubConfig()


@pytest.fixture
async def node(hub_config: HubConfig) -> AsyncIterator[Node]:
    """A started node bound to 127.0.0.1 on free ports, stopped after the test."""
    async with Node(ServerConfig(port=0, http_port=0, hub=hub_config)) as running:
        yield running
