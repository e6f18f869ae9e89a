"""The Python async client SDK of agentcast."""

from agentcast.client.backoff import Backoff
from agentcast.client.client import Client
from agentcast.client.groups import GroupDelivery, GroupInfo, GroupSubscription
from agentcast.client.idempotent import IdempotentHandler, idempotent
from agentcast.client.processed import MemoryProcessedIds, ProcessedIds, SqliteProcessedIds
from agentcast.client.results import PublishAck
from agentcast.client.subscription import Subscription
from agentcast.client.worker import Worker
from agentcast.protocol.commands import Position
from agentcast.protocol.envelope import Envelope

__all__ = [
    "Backoff",
    "Client",
    "Envelope",
    "GroupDelivery",
    "GroupInfo",
    "GroupSubscription",
    "IdempotentHandler",
    "MemoryProcessedIds",
    "Position",
    "ProcessedIds",
    "PublishAck",
    "SqliteProcessedIds",
    "Subscription",
    "Worker",
    "idempotent",
]
