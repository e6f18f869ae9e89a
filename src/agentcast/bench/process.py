"""Process set-up shared by the benchmark's child processes.

* :func:`raise_nofile_limit` lifts the open-files soft limit to the hard limit, so one
  process can hold ten thousand sockets.
* :func:`pick_cpus` and :func:`pin_to_cpu` place the server and the load on different CPUs
  (when the machine has at least two), so neither steals the other's cycles.
* :func:`announce_ready` / :data:`READY_PREFIX` are the readiness handshake: a child prints
  one ``READY <port>`` line on stdout once it accepts connections; the parent never sleeps.
* :func:`exit_with_parent` stops a child whose parent has gone away (even ``kill -9``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys

READY_PREFIX = "READY "
PARENT_CHECK_INTERVAL = 1.0


def raise_nofile_limit() -> int:
    """Set ``RLIMIT_NOFILE``'s soft limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def pick_cpus() -> tuple[int | None, int | None]:
    """The CPUs for (server, load): the first two this process may run on, or no pinning."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def pin_to_cpu(cpu: int | None) -> None:
    """Restrict the calling process to ``cpu`` (``None``: leave it unpinned)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def announce_ready(port: int) -> None:
    """Tell the parent the listener is bound: one ``READY <port>`` line on stdout."""
    sys.stdout.write(f"{READY_PREFIX}{port}\n")
    sys.stdout.flush()


def parse_ready(line: str) -> int:
    """The port of a ``READY <port>`` line; :class:`ValueError` for anything else."""
    if not line.startswith(READY_PREFIX):
        raise ValueError(f"not a readiness line: {line!r}")
    return int(line[len(READY_PREFIX) :].strip())


async def exit_with_parent(stop: asyncio.Event) -> None:
    """Set ``stop`` once this process's parent has exited (checked every second)."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_CHECK_INTERVAL)
