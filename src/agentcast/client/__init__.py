"""The Python async client SDK of agentcast."""

from agentcast.client.backoff import Backoff
from agentcast.client.client import Client
from agentcast.client.results import PublishAck
from agentcast.client.subscription import Subscription
from agentcast.protocol.envelope import Envelope

__all__ = ["Backoff", "Client", "Envelope", "PublishAck", "Subscription"]
