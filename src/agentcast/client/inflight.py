"""The client's table of publishes waiting for their ack, in the order they were issued."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class PendingPublish:
    """A publish waiting for its ack; resent on every new connection until acked.

    ``command`` holds everything but ``id`` and ``lamport``, which are set per transmission;
    the idempotency key inside it never changes, so the node can recognise a resend.
    """

    command: dict[str, Any]
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    generation: int = -1  # the connection it was last sent on

    def renew(self) -> None:
        """Prepare a retry after a refusal: a fresh future, to be sent on the current link
        (or resent by the next one)."""
        self.future = asyncio.get_running_loop().create_future()
        self.generation = -1


class InflightPublishes:
    """Unacked publishes by issue order (insertion order of the table)."""

    def __init__(self) -> None:
        self._tokens = itertools.count(1)
        self._items: dict[int, PendingPublish] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(self, pending: PendingPublish) -> int:
        """Track ``pending``; the token removes it again."""
        token = next(self._tokens)
        self._items[token] = pending
        return token

    def remove(self, token: int) -> None:
        """Stop tracking (acked, refused, timed out or cancelled); cancels a pending future."""
        pending = self._items.pop(token, None)
        if pending is not None and not pending.future.done():
            pending.future.cancel()

    def unsent(self, generation: int) -> list[PendingPublish]:
        """The waiting publishes not yet sent on connection ``generation``, oldest first."""
        return [
            p for p in self._items.values() if p.generation != generation and not p.future.done()
        ]

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Fail every waiting publish with a fresh ``error()``."""
        for pending in self._items.values():
            if not pending.future.done():
                pending.future.set_exception(error())
