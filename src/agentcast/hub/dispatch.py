"""Turns one inbound text frame of a connection into hub calls and a queued reply."""

from __future__ import annotations

import logging

from agentcast.errors import AgentcastError, AlreadyHello, HelloRequired, ProtocolError
from agentcast.hub.connection import Connection
from agentcast.protocol.commands import (
    PROTOCOL_VERSION,
    Command,
    Hello,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    decode_command,
)
from agentcast.protocol.envelope import rfc3339_now
from agentcast.protocol.frames import error_reply, ok_reply, ws_text_frame

log = logging.getLogger(__name__)


def handle_frame(conn: Connection, data: bytes | str) -> None:
    """Decode, execute and reply to one command of ``conn``.

    Errors become error replies on ``conn`` only; nothing else is disturbed.
    """
    hub = conn.hub
    try:
        cmd = decode_command(data)
        result = _execute(conn, cmd)
        if result is not _NO_REPLY:
            conn.send_control(ws_text_frame(ok_reply(cmd.id, result)))
    except ProtocolError as exc:
        hub.stats.errors += 1
        conn.send_control(ws_text_frame(error_reply(exc.command_id, exc)))
    except AgentcastError as exc:
        hub.stats.errors += 1
        conn.send_control(ws_text_frame(error_reply(None, exc)))
    except Exception:  # a bug must not take the node down; the client gets `internal`
        log.exception("command failed on %s", conn.id)
        hub.stats.errors += 1
        conn.send_control(ws_text_frame(error_reply(None, AgentcastError("internal server error"))))


_NO_REPLY = object()


def _execute(conn: Connection, cmd: Command) -> object:
    """Run ``cmd``; return the reply's ``result``, or ``_NO_REPLY`` for an unacked publish."""
    hub = conn.hub
    try:
        if isinstance(cmd, Publish):
            if not conn.hello_done:
                raise HelloRequired("send 'hello' first")
            published = hub.publish(cmd, conn.source)
            return published.to_dict() if cmd.ack else _NO_REPLY
        if isinstance(cmd, Hello):
            if conn.hello_done:
                raise AlreadyHello("'hello' was already accepted on this connection")
            conn.hello_done = True
            conn.client = cmd.client
            return {
                "connection": conn.id,
                "node": hub.node_id,
                "protocol": PROTOCOL_VERSION,
                "heartbeat_interval": hub.config.heartbeat_interval,
                "resume": {topic: {"recovered": False} for topic in cmd.resume},
                "limits": {
                    "max_subscriptions": hub.config.max_subscriptions,
                    "max_payload_bytes": hub.config.max_payload_bytes,
                    "max_queue_messages": hub.config.max_queue_messages,
                },
            }
        if isinstance(cmd, Ping):
            return {"time": rfc3339_now()}
        if not conn.hello_done:
            raise HelloRequired("send 'hello' first")
        if isinstance(cmd, Subscribe):
            hub.subscribe(conn, cmd.topic, cmd.policy, cmd.key_header)
            return {"topic": cmd.topic}
        if isinstance(cmd, Unsubscribe):
            hub.unsubscribe(conn, cmd.topic)
            return {"topic": cmd.topic}
        raise AssertionError(f"unhandled command {cmd!r}")
    except ProtocolError as exc:
        exc.command_id = cmd.id
        raise
