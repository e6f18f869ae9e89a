"""NATS server with its WebSocket listener as a fan-out peer (the ``nats-server`` on PATH).

:func:`nats_config` is the whole configuration the benchmark writes: client port and
WebSocket listener on 127.0.0.1, no TLS, no compression, defaults otherwise.
"""

from __future__ import annotations

READY_MARK = "Server is ready"


def nats_config(client_port: int, ws_port: int) -> str:
    """The ``nats-server -c`` configuration for the two ports."""
    return (
        f'listen: "127.0.0.1:{client_port}"\n'
        "websocket {\n"
        f'  listen: "127.0.0.1:{ws_port}"\n'
        "  no_tls: true\n"
        "  compression: false\n"
        "}\n"
    )
