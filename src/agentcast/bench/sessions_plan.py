"""The workload of ``agentcast bench sessions`` as pure arithmetic (no I/O).

A run has ``sessions`` sessions; each has ``agents`` agent connections and ``observers``
observer connections. In session ``n`` of tenant :data:`TENANT`:

* every agent ``a`` subscribes to the session's broadcast topic ``t.s<n>.chat`` and to its
  own inbox ``t.s<n>.agent.<a>``;
* every observer subscribes to the wildcard ``t.s<n>.>`` (it also sees the node's presence
  events, which the load ignores because they carry no send time).

Besides, ``global_observers`` connections watch the whole tenant (``t.>``): every
publication reaches each of them once more.

Publications are open-loop: message ``i`` of a load process is due at ``start + i / rate``
whatever happened to earlier ones. Message ``i`` is sent by agent ``(i // n) % agents`` of
local session ``i % n`` (``n`` sessions in that process); a fraction ``direct`` of them go
to another agent's inbox (1 agent + the observers receive it), the rest to the session's
chat (all agents, the sender included, + the observers). ``rate`` is the target of
*deliveries* per second over the whole run; :func:`publish_rate` turns it into publishes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TENANT = "t"


@dataclass(slots=True, frozen=True)
class SessionsPlan:
    """What one run does; ``processes`` load processes share the sessions."""

    sessions: int
    agents: int
    observers: int
    rate: float
    seconds: float
    warmup: float
    size: int
    direct: float
    processes: int
    global_observers: int = 0

    @property
    def connections(self) -> int:
        """Every WebSocket connection of the run:
        ``sessions * (agents + observers) + global_observers``."""
        return self.sessions * (self.agents + self.observers) + self.global_observers

    def problem(self) -> str | None:
        """Why this plan cannot run (a message naming the option), or ``None``."""
        if self.sessions < 1:
            return "--sessions must be at least 1"
        if self.agents < 2:
            return "--agents must be at least 2"
        if self.observers < 0:
            return "--observers must not be negative"
        if self.global_observers < 0:
            return "--global-observers must not be negative"
        if self.rate <= 0:
            return "--rate must be positive"
        if self.seconds <= 0:
            return "--seconds must be positive"
        if self.warmup < 0:
            return "--warmup must not be negative"
        if self.size < 0:
            return "--size must not be negative"
        if not 0.0 <= self.direct <= 1.0:
            return "--direct must be between 0 and 1"
        if not 1 <= self.processes <= self.sessions:
            return "--processes must be between 1 and --sessions"
        return None


def chat_deliveries(agents: int, observers: int) -> int:
    """Deliveries of one chat publication: every agent of the session and its observers."""
    return agents + observers


def direct_deliveries(observers: int) -> int:
    """Deliveries of one inbox publication: the addressed agent and the session's observers."""
    return 1 + observers


def deliveries_per_publish(agents: int, observers: int, direct: float) -> float:
    """The mean deliveries of one publication for a ``direct`` share of inbox messages."""
    return (1.0 - direct) * chat_deliveries(agents, observers) + direct * direct_deliveries(
        observers
    )


def publish_rate(plan: SessionsPlan) -> float:
    """Publishes per second (whole run) that yield ``plan.rate`` deliveries per second."""
    fanout = deliveries_per_publish(plan.agents, plan.observers, plan.direct)
    return plan.rate / (fanout + plan.global_observers)


def split_sessions(sessions: int, processes: int) -> list[tuple[int, int]]:
    """``(first session, count)`` for each load process: contiguous, sizes differ by <= 1."""
    base, extra = divmod(sessions, processes)
    out: list[tuple[int, int]] = []
    first = 0
    for k in range(processes):
        count = base + (1 if k < extra else 0)
        out.append((first, count))
        first += count
    return out


def is_direct(i: int, direct: float) -> bool:
    """Whether message ``i`` goes to an inbox: exactly ``floor(n * direct)`` of the first
    ``n`` messages do, spread evenly."""
    return math.floor((i + 1) * direct) > math.floor(i * direct)


@dataclass(slots=True, frozen=True)
class Message:
    """Who sends message ``i`` and where: ``target`` is ``None`` for the session's chat."""

    session: int
    sender: int
    target: int | None


def message_of(i: int, sessions: int, agents: int, direct: float) -> Message:
    """Message ``i`` of a load process holding ``sessions`` sessions (indices local to it).

    The inbox target is never the sender (``agents`` must be at least 2).
    """
    session = i % sessions
    turn = i // sessions
    sender = turn % agents
    if not is_direct(i, direct):
        return Message(session, sender, None)
    target = (sender + 1 + turn % (agents - 1)) % agents
    return Message(session, sender, target)


def messages_due(elapsed: float, rate: float, total: int) -> int:
    """How many of ``total`` messages are due ``elapsed`` seconds after the start (message 0
    is due at once)."""
    if elapsed < 0:
        return 0
    return min(total, math.floor(elapsed * rate) + 1)


def chat_topic(session: int) -> str:
    return f"{TENANT}.s{session}.chat"


def inbox_topic(session: int, agent: int) -> str:
    return f"{TENANT}.s{session}.agent.{agent}"


def observer_pattern(session: int) -> str:
    return f"{TENANT}.s{session}.>"


def global_pattern() -> str:
    return f"{TENANT}.>"


def messages_of(rate: float, seconds: float) -> int:
    """How many messages a load process sends at ``rate`` over ``seconds`` (warmup included)."""
    return int(rate * seconds)
