"""The transactional outbox: write events inside the application's own database
transaction (:func:`add`), and let a :class:`Relay` publish the committed ones to agentcast,
per-key ordered and at least once (deduplicated by the node through idempotency keys).
See docs/outbox.md."""

from agentcast.outbox.metrics import RelayMetrics
from agentcast.outbox.relay import Relay, open_store
from agentcast.outbox.schema import init_outbox, init_postgres_connection, init_sqlite_connection
from agentcast.outbox.store import OutboxRow, OutboxStore
from agentcast.outbox.writer import OutboxMessage, add, add_many, key_hash

__all__ = [
    "OutboxMessage",
    "OutboxRow",
    "OutboxStore",
    "Relay",
    "RelayMetrics",
    "add",
    "add_many",
    "init_outbox",
    "init_postgres_connection",
    "init_sqlite_connection",
    "key_hash",
    "open_store",
]
