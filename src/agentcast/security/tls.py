"""Server-side TLS: an :class:`ssl.SSLContext` for the WebSocket and HTTP listeners.

TLS 1.2 is the minimum; the cipher choice and other options are the ``ssl`` module's secure
defaults for a server. Both listeners take the context unchanged: picows'
``ws_create_server(..., ssl=context)`` and aiohttp's ``web.TCPSite(..., ssl_context=context)``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from agentcast.security.errors import config_error


def _check_readable(path: str | Path, key: str) -> None:
    file = Path(path)
    if not file.exists():
        raise config_error(f"[security] {key}: {file} does not exist")
    if not file.is_file():
        raise config_error(f"[security] {key}: {file} is not a file")
    if not os.access(file, os.R_OK):
        raise config_error(f"[security] {key}: {file} is not readable by this process")
    try:
        with file.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise config_error(f"[security] {key}: cannot read {file}: {exc.strerror}") from None


def server_ssl_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    """A server context holding the certificate chain ``cert_file`` (PEM, leaf first) and
    its private key ``key_file`` (PEM, unencrypted).

    Raises :class:`agentcast.config.ConfigError` when a file is missing or unreadable, or
    when the two do not form a valid pair.
    """
    _check_readable(cert_file, "tls_cert")
    _check_readable(key_file, "tls_key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        context.load_cert_chain(str(cert_file), str(key_file), password=_no_password)
    except _EncryptedKey:
        raise config_error(
            f"[security] tls_key {key_file} is encrypted; give an unencrypted key file"
        ) from None
    except ssl.SSLError as exc:
        detail = getattr(exc, "reason", None) or str(exc)
        raise config_error(
            f"[security] tls_cert {cert_file} and tls_key {key_file} are not a usable "
            f"PEM certificate and matching unencrypted key ({detail})"
        ) from None
    return context


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey
