"""A bounded window of recently seen ids (pure, no I/O)."""

from __future__ import annotations

from collections import deque

DEFAULT_DEDUPE_WINDOW = 10_000


class IdWindow:
    """The last ``size`` distinct ids added, forgotten oldest first (a ring).

    :meth:`add` is O(1) and memory is bounded by ``size``. An id older than the window is
    forgotten, so a duplicate arriving more than ``size`` ids later is not recognised. A
    ``size`` of 0 disables the window: nothing is remembered.
    """

    __slots__ = ("_order", "_seen", "size")

    def __init__(self, size: int = DEFAULT_DEDUPE_WINDOW) -> None:
        if size < 0:
            raise ValueError("the window size must be non-negative")
        self.size = size
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, item: object) -> bool:
        return item in self._seen

    def add(self, item: str) -> bool:
        """Remember ``item``; return ``False`` if it was already in the window."""
        if item in self._seen:
            return False
        if self.size == 0:
            return True
        self._seen.add(item)
        self._order.append(item)
        if len(self._order) > self.size:
            self._seen.discard(self._order.popleft())
        return True
