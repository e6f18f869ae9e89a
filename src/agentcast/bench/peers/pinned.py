"""``python -m agentcast.bench.peers.pinned CPU PROGRAM [ARGS...]``: restrict this process to
``CPU`` and replace it with ``PROGRAM`` (same pid), so every thread the program starts is on
that CPU from its first instruction. ``CPU`` ``-`` means no pinning."""

from __future__ import annotations

import os
import sys

from agentcast.bench.process import pin_to_cpu, raise_nofile_limit


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(
            "usage: python -m agentcast.bench.peers.pinned CPU PROGRAM [ARGS...]", file=sys.stderr
        )
        return 2
    raise_nofile_limit()
    pin_to_cpu(None if args[0] == "-" else int(args[0]))
    os.execvp(args[1], args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
