"""A TCP fault-injecting proxy for chaos scenarios (asyncio, loopback only).

:class:`FaultProxy` listens on ``127.0.0.1`` (a free port, or the one given) and pipes each
connection to one upstream address. While it runs, the scenario switches its behaviour:

* pass-through (the start, and after :meth:`FaultProxy.heal`);
* :meth:`FaultProxy.set_latency`: every chunk is forwarded ``seconds`` after it was read,
  in order, in both directions;
* :meth:`FaultProxy.cut`: a partition. Open connections stop forwarding (bytes wait,
  nothing is lost, TCP backpressure applies) and new connections are refused (the
  listener is closed); :meth:`FaultProxy.heal` forwards what waited and listens again on
  the same port;
* :meth:`FaultProxy.reset`: every open connection is aborted with a TCP RST on both sides
  (``SO_LINGER`` 0); new connections are accepted as before.

Counters (:attr:`FaultProxy.accepted`, :attr:`FaultProxy.resets`, :attr:`FaultProxy.forwarded`)
let a scenario or a test see that traffic really went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

CHUNK = 65536
CLOSE_TIMEOUT = 5.0


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket so the peer gets a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection: two directions, each a reader task and a delayed sender."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.writers = (client[1], upstream[1])
        self.tasks = [
            asyncio.ensure_future(self._direction(client[0], upstream[1])),
            asyncio.ensure_future(self._direction(upstream[0], client[1])),
        ]

    async def run(self) -> None:
        try:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await self.stop()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    def reset(self) -> None:
        for writer in self.writers:
            abort_with_rst(writer)
        for task in self.tasks:
            task.cancel()

    async def _direction(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Read ``source`` while the proxy flows; the sender writes each chunk when due.
        At EOF, everything read is written before ``sink`` is half-closed."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)
        sender = asyncio.ensure_future(self._send(queue, sink))
        try:
            while True:
                await self.proxy._flowing.wait()
                data = await source.read(CHUNK)
                if not data:
                    break
                await queue.put((time.monotonic() + self.proxy.latency, data))
            await queue.put((0.0, b""))  # the end: the sender returns after the rest
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            with contextlib.suppress(OSError, RuntimeError):
                if sink.can_write_eof():
                    sink.write_eof()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        """Write each queued chunk once due and while flowing; after a write error keep
        taking (and dropping) chunks so the reader never blocks; return at the end mark."""
        broken = False
        while True:
            due, data = await queue.get()
            if not data:
                return
            if broken:
                continue
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.proxy._flowing.wait()
            try:
                sink.write(data)
                await sink.drain()
            except OSError:
                broken = True
                continue
            self.proxy.forwarded += len(data)


class FaultProxy:
    """Pipes connections from ``127.0.0.1:port`` to ``upstream_host:upstream_port``.

    Use ``async with FaultProxy(...)`` or :meth:`start` / :meth:`close`. The controls are
    synchronous except :meth:`cut` and :meth:`heal`, which close and reopen the listener.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port
        self.latency = 0.0
        self.accepted = 0
        self.resets = 0
        self.forwarded = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def is_cut(self) -> bool:
        return not self._flowing.is_set()

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._links)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen (on a free port the first time, then on the same one)."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and close every connection (FIN, not RST)."""
        self._stop_listening()
        self._flowing.set()
        await asyncio.gather(*(link.stop() for link in list(self._links)))
        if self._handlers:  # each returns once its link stopped (or its connect failed)
            await asyncio.wait(set(self._handlers), timeout=CLOSE_TIMEOUT)
        self._links.clear()

    def set_latency(self, seconds: float) -> None:
        """Forward every chunk read from now on ``seconds`` later (0: pass-through)."""
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self.latency = seconds

    async def cut(self) -> None:
        """Stop forwarding on open connections and refuse new ones."""
        self._flowing.clear()
        self._stop_listening()

    async def heal(self) -> None:
        """End a cut: forward what waited and accept connections again (no added latency)."""
        self.latency = 0.0
        self._flowing.set()
        if self._server is None:
            await self.start()

    def reset(self) -> int:
        """Abort every open connection with an RST on both sides; return how many."""
        links = list(self._links)
        for link in links:
            link.reset()
        self.resets += len(links)
        return len(links)

    def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # the listening socket closes now; open links are ours to end

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            try:
                upstream = await asyncio.open_connection(*self.upstream)
            except OSError:
                abort_with_rst(writer)
                return
            self.accepted += 1
            link = _Link(self, (reader, writer), upstream)
            self._links.add(link)
            try:
                await link.run()
            finally:
                self._links.discard(link)
        finally:
            self._handlers.discard(task)
