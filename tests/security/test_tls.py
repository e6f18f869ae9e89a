"""Server TLS contexts: a real handshake on 127.0.0.1, and clear errors for bad files."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from agentcast.config import ConfigError
from agentcast.security.tls import server_ssl_context
from tests.security.support import write_self_signed


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(await reader.readline())
        await writer.drain()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("client_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_handshake_and_echo_over_tls(tmp_path: Path, client_max: ssl.TLSVersion) -> None:
    cert, key = write_self_signed(tmp_path)
    server_context = server_ssl_context(cert, key)
    assert server_context.minimum_version == ssl.TLSVersion.TLSv1_2
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(cert))
    client_context.maximum_version = client_max
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_context), timeout=10
        )
        try:
            version = writer.get_extra_info("ssl_object").version()
            assert version == ("TLSv1.2" if client_max is ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
            writer.write(b"hello over tls\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), timeout=10) == b"hello over tls\n"
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_client_that_does_not_trust_the_cert_fails_the_handshake(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=server_ssl_context(cert, key))
    port = server.sockets[0].getsockname()[1]
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_cert, _ = write_self_signed(other_dir)
    client_context = ssl.create_default_context(cafile=str(other_cert))
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client_context), timeout=10
            )
    finally:
        server.close()
        await server.wait_closed()


def test_missing_files_are_config_errors(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    with pytest.raises(ConfigError, match=r"tls_cert: .*does not exist"):
        server_ssl_context(tmp_path / "nope.pem", key)
    with pytest.raises(ConfigError, match=r"tls_key: .*does not exist"):
        server_ssl_context(cert, tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="is not a file"):
        server_ssl_context(tmp_path, key)


def test_mismatched_or_garbage_files_are_config_errors(tmp_path: Path) -> None:
    cert, _ = write_self_signed(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = write_self_signed(other_dir)
    with pytest.raises(ConfigError, match="not a usable"):
        server_ssl_context(cert, other_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a usable"):
        server_ssl_context(garbage, other_key)


def test_encrypted_key_is_a_config_error(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path, password=b"pass-phrase")
    with pytest.raises(ConfigError, match="is encrypted"):
        server_ssl_context(cert, key)
