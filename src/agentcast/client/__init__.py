"""The Python async client SDK of agentcast."""

from agentcast.client.backoff import Backoff
from agentcast.client.client import Client
from agentcast.client.idempotent import IdempotentHandler, idempotent
from agentcast.client.processed import MemoryProcessedIds, ProcessedIds, SqliteProcessedIds
from agentcast.client.results import PublishAck
from agentcast.client.subscription import Subscription
from agentcast.protocol.commands import Position
from agentcast.protocol.envelope import Envelope

__all__ = [
    "Backoff",
    "Client",
    "Envelope",
    "IdempotentHandler",
    "MemoryProcessedIds",
    "Position",
    "ProcessedIds",
    "PublishAck",
    "SqliteProcessedIds",
    "Subscription",
    "idempotent",
]
