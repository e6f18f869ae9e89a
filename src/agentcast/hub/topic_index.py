"""Subscription index: exact topics in a dict, wildcard patterns in a segment trie.

:meth:`TopicIndex.match` returns, for one published topic, the subscriptions to deliver to,
at most one per connection (the earliest-subscribed of that connection's matching patterns).
Results are cached per topic until the next subscribe or unsubscribe, so a steady publish
stream costs one dict lookup per publication.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Indexed(Protocol):
    """What the index needs of a subscription."""

    @property
    def pattern(self) -> str: ...

    @property
    def owner(self) -> object: ...

    @property
    def order(self) -> int: ...


S = TypeVar("S", bound=Indexed)

MAX_CACHED_TOPICS = 65536


class _Node(Generic[S]):
    __slots__ = ("children", "here", "rest")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.here: dict[S, None] = {}
        self.rest: dict[S, None] = {}


class TopicIndex(Generic[S]):
    """Maps topics to subscriptions. Not thread-safe."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[S, None]] = {}
        self._root: _Node[S] = _Node()
        self._cache: dict[str, tuple[S, ...]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, sub: S) -> None:
        """Index ``sub`` under its pattern (adding the same object twice is a no-op)."""
        bucket = self._bucket(sub.pattern, create=True)
        assert bucket is not None
        if sub not in bucket:
            bucket[sub] = None
            self._count += 1
            self._cache.clear()

    def remove(self, sub: S) -> None:
        """Remove ``sub`` if indexed; empty trie branches are pruned."""
        pattern = sub.pattern
        if "*" not in pattern and ">" not in pattern:
            bucket = self._exact.get(pattern)
            if bucket is not None and sub in bucket:
                del bucket[sub]
                if not bucket:
                    del self._exact[pattern]
                self._count -= 1
                self._cache.clear()
            return
        path: list[tuple[_Node[S], str]] = []
        node = self._root
        segments = pattern.split(".")
        for segment in segments[:-1] if segments[-1] == ">" else segments:
            child = node.children.get(segment)
            if child is None:
                return
            path.append((node, segment))
            node = child
        bucket = node.rest if segments[-1] == ">" else node.here
        if sub not in bucket:
            return
        del bucket[sub]
        self._count -= 1
        self._cache.clear()
        for parent, segment in reversed(path):
            if node.children or node.here or node.rest:
                break
            del parent.children[segment]
            node = parent

    def match(self, topic: str) -> tuple[S, ...]:
        """Subscriptions matching exact ``topic``, one per owner, in no particular order."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        found: list[S] = list(self._exact.get(topic, ()))
        if self._root.children:
            self._walk(self._root, topic.split("."), 0, found)
        result = tuple(_one_per_owner(found))
        if len(self._cache) >= MAX_CACHED_TOPICS:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def _walk(self, node: _Node[S], segments: list[str], index: int, found: list[S]) -> None:
        if index == len(segments):
            found.extend(node.here)
            return
        if node.rest:
            found.extend(node.rest)
        for key in (segments[index], "*"):
            child = node.children.get(key)
            if child is not None:
                self._walk(child, segments, index + 1, found)

    def _bucket(self, pattern: str, *, create: bool) -> dict[S, None] | None:
        if "*" not in pattern and ">" not in pattern:
            bucket = self._exact.get(pattern)
            if bucket is None and create:
                bucket = self._exact[pattern] = {}
            return bucket
        segments = pattern.split(".")
        last_is_rest = segments[-1] == ">"
        node = self._root
        for segment in segments[:-1] if last_is_rest else segments:
            child = node.children.get(segment)
            if child is None:
                if not create:
                    return None
                child = node.children[segment] = _Node()
            node = child
        return node.rest if last_is_rest else node.here


def _one_per_owner(found: list[S]) -> list[S]:
    if len(found) < 2:
        return found
    best: dict[object, S] = {}
    for sub in found:
        owner = sub.owner
        current = best.get(owner)
        if current is None or sub.order < current.order:
            best[owner] = sub
    return list(best.values())
