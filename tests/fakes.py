"""Test doubles for the hub's transport side."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from agentcast.hub.config import HubConfig
from agentcast.hub.hub import Hub


class FakeSink:
    """Records writes, closes and pings instead of touching a socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.pings = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def ping(self) -> None:
        self.pings += 1

    def messages(self) -> list[dict[str, object]]:
        """Every JSON message written, decoded from the raw WebSocket frames."""
        out: list[dict[str, object]] = []
        for data in self.writes:
            pos = 0
            while pos < len(data):
                assert data[pos] == 0x81
                size = data[pos + 1]
                pos += 2
                if size == 126:
                    size = int.from_bytes(data[pos : pos + 2], "big")
                    pos += 2
                elif size == 127:
                    size = int.from_bytes(data[pos : pos + 8], "big")
                    pos += 8
                out.append(orjson.loads(data[pos : pos + size]))
                pos += size
        return out

    def events(self) -> list[dict[str, object]]:
        return [m["event"] for m in self.messages() if m["type"] == "event"]  # type: ignore[misc]


class ManualLoop:
    """Collects ``call_soon`` callbacks so a test decides when writers run."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.pending.append(callback)

    def run(self) -> None:
        while self.pending:
            self.pending.pop(0)()


def make_hub(
    config: HubConfig | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[Hub, ManualLoop]:
    loop = ManualLoop()
    kwargs = {} if clock is None else {"clock": clock}
    return Hub(config or HubConfig(), loop.call_soon, node_id="t", **kwargs), loop
