"""A bounded, time-windowed memory of idempotency keys and the results they produced."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class DedupeWindow(Generic[V]):
    """Remembers ``key -> value`` for ``window`` seconds, and at most ``max_keys`` keys.

    Keys are forgotten in insertion order once older than the window, or earlier when the
    count bound is hit (the documented cost of a bound: a retry that arrives after its key
    was pushed out is delivered again).
    """

    def __init__(self, window: float, max_keys: int, clock: Callable[[], float]) -> None:
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        """The value stored for ``key`` if it is still inside the window."""
        self._expire()
        item = self._items.get(key)
        return None if item is None else item[1]

    def put(self, key: str, value: V) -> None:
        """Remember ``key`` from now on."""
        self._expire()
        if len(self._items) >= self.max_keys:
            self._items.popitem(last=False)
            self.evicted += 1
        self._items[key] = (self._clock() + self.window, value)

    def _expire(self) -> None:
        now = self._clock()
        items = self._items
        while items:
            key, (expires, _) = next(iter(items.items()))
            if expires > now:
                break
            del items[key]
