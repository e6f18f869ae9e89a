"""Reconnect delays: exponential growth with full jitter (pure, no I/O)."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays for successive reconnect attempts.

    Attempt ``n`` (counting from 0 since the last :meth:`reset`) waits a uniformly random time
    in ``[0, min(maximum, initial * 2**n)]`` ("full jitter"), so clients dropped together by
    one node do not reconnect in lockstep.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        if initial < 0 or maximum < 0:
            raise ValueError("backoff delays must be non-negative")
        self.initial = initial
        self.maximum = max(initial, maximum)
        self._uniform = uniform
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # 2**60 is far past any useful ceiling; the cap keeps the float finite.
        return min(self.maximum, self.initial * 2.0 ** min(self.attempt, 60))

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt count."""
        delay = self.ceiling() * self._uniform()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial`` (after a successful connection)."""
        self.attempt = 0
