"""The fault proxy against a real echo server on loopback: pass-through, latency, cut
(bytes held, new connections refused, then delivered on heal) and reset (RST)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from agentcast.chaos.proxy import FaultProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo_port) as running:
        yield running


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


async def test_pass_through_forwards_both_ways(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    payload = bytes(range(256)) * 1000
    assert await roundtrip(reader, writer, payload) == payload
    assert proxy.accepted == 1 and proxy.forwarded == 2 * len(payload)
    writer.close()


async def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.set_latency(0.05)
    started = time.monotonic()
    assert await roundtrip(reader, writer, b"ping") == b"ping"
    assert time.monotonic() - started >= 0.1  # a lower bound only: 50 ms each way
    with pytest.raises(ValueError):
        proxy.set_latency(-1)
    writer.close()


async def test_cut_holds_bytes_and_refuses_connections_until_heal(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await roundtrip(reader, writer, b"before") == b"before"
    await proxy.cut()
    assert proxy.is_cut
    forwarded = proxy.forwarded
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    reading = asyncio.ensure_future(reader.readexactly(4))
    done, _ = await asyncio.wait({reading}, timeout=0.2)
    assert not done and proxy.forwarded == forwarded  # nothing went through the cut
    await proxy.heal()
    assert await reading == b"held"
    second_reader, second_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await roundtrip(second_reader, second_writer, b"after") == b"after"
    writer.close()
    second_writer.close()


async def test_reset_aborts_open_connections_with_rst(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await roundtrip(reader, writer, b"x") == b"x"
    assert proxy.connections == 1
    assert proxy.reset() == 1
    with pytest.raises(ConnectionResetError):
        await reader.read(1)
        writer.write(b"y")  # an RST may be seen on the next write rather than the read
        await writer.drain()
        await reader.read(1)
    assert proxy.resets == 1
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await roundtrip(reader, writer, b"z") == b"z"  # still accepting
    writer.close()


async def test_close_ends_every_connection(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await roundtrip(reader, writer, b"x") == b"x"
    await proxy.close()
    assert await reader.read() == b""
    assert proxy.connections == 0
    writer.close()
