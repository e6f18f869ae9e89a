"""`agentcast drain`: a running node stops taking connections, tells its clients to
reconnect elsewhere (4000) and exits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.nodeproc import ServerProcess
from tests.wsclient import RawClient


@pytest.mark.timeout(60)
async def test_drain_command_moves_clients_and_stops_the_node(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path, 'log_level = "warning"\n')
    node.start()
    try:
        await node.wait_ready()
        client = await RawClient.open(node.ws_url)
        drain = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from agentcast.cli import main; main()",
            "drain",
            "--http",
            f"http://127.0.0.1:{node.http_port}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(drain.communicate(), 30)
        assert drain.returncode == 0, err
        assert b"draining" in out
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await client.ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 4000
        assert node.process is not None
        assert await asyncio.to_thread(node.process.wait, 30) == 0
    finally:
        node.kill()


async def test_drain_of_an_unreachable_node_fails_clearly() -> None:
    drain = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from agentcast.cli import main; main()",
        "drain",
        "--http",
        "http://127.0.0.1:9",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(drain.communicate(), 30)
    assert drain.returncode == 1 and b"cannot reach" in err
