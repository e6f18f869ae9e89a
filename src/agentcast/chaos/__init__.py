"""Chaos scenarios for agentcast nodes, and the invariant checker that judges them.

A scenario starts real ``agentcast serve`` processes (and, for clusters, private Redis or
NATS servers) on free loopback ports, drives SDK clients through a fault (``kill -9``, a
broker restart, a stuck consumer, a reconnect loop, a faulty network link), records what
happened in a :class:`~agentcast.chaos.invariants.History`, and hands it to
:func:`~agentcast.chaos.invariants.check` for one verdict per invariant.
"""
