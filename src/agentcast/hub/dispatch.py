"""Turns one inbound text frame of a connection into hub calls and a queued reply."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from agentcast.errors import (
    AgentcastError,
    AlreadyHello,
    HelloRequired,
    NotDurable,
    NotInFlight,
    NotSubscribed,
    ProtocolError,
    Unavailable,
)
from agentcast.hub.connection import Connection, Subscription
from agentcast.hub.durable_log import Outcome
from agentcast.hub.groups import GroupSettings
from agentcast.hub.presence import presence_for, presence_topic
from agentcast.hub.recovery import RecoveryPlan, plan_recovery, run_replay
from agentcast.protocol.codes import CloseCode
from agentcast.protocol.commands import (
    PROTOCOL_VERSION,
    Ack,
    Command,
    CommandId,
    Hello,
    Nack,
    Ping,
    PresenceQuery,
    Publish,
    Refresh,
    Subscribe,
    Unsubscribe,
    decode_command,
)
from agentcast.protocol.envelope import rfc3339_now
from agentcast.protocol.frames import error_reply, ok_reply, ws_text_frame
from agentcast.protocol.topics import is_pattern
from agentcast.security.capabilities import Operation
from agentcast.security.errors import TooManyConnections, Unauthorized

log = logging.getLogger(__name__)

_NO_REPLY = object()


def handle_frame(conn: Connection, data: bytes | str) -> None:
    """Decode, execute and reply to one command of ``conn``.

    Errors become error replies on ``conn`` only; nothing else is disturbed. Commands that
    wait on storage (durable publish, subscribe with history, hello with resume) reply
    later, from a callback or a hub-owned task.
    """
    try:
        cmd = decode_command(data)
    except ProtocolError as exc:
        _send_error(conn, exc.command_id, exc)
        return
    try:
        result = _execute(conn, cmd)
    except Exception as exc:
        _send_error(conn, cmd.id, exc)
        return
    if result is not _NO_REPLY:
        _reply_ok(conn, cmd.id, result)


def _reply_ok(conn: Connection, command_id: CommandId, result: object) -> None:
    """Queue a success reply; a command sent without an ``id`` gets none."""
    if command_id is not None:
        conn.send_control(ws_text_frame(ok_reply(command_id, result)))


def _send_error(conn: Connection, command_id: CommandId, exc: BaseException) -> None:
    conn.hub.stats.errors += 1
    if not isinstance(exc, AgentcastError):
        log.error("command failed on %s", conn.id, exc_info=exc)
        exc = AgentcastError("internal server error")
    conn.send_control(ws_text_frame(error_reply(command_id, exc)))


def _execute(conn: Connection, cmd: Command) -> object:
    """Run ``cmd``; return the reply's ``result``, or ``_NO_REPLY`` when the reply is sent
    later or not at all (unacked publish)."""
    hub = conn.hub
    if isinstance(cmd, Publish):
        if not conn.hello_done:
            raise HelloRequired("send 'hello' first")
        conn.auth.check_publish(cmd.topic)
        if hub.is_durable(cmd.topic):
            hub.submit_durable(cmd, conn.source, partial(_reply_durable, conn, cmd.id, cmd.ack))
            return _NO_REPLY
        published = hub.publish(cmd, conn.source)
        return published.to_dict() if cmd.ack else _NO_REPLY
    if isinstance(cmd, Hello):
        return _hello(conn, cmd)
    if isinstance(cmd, Ping):
        return {"time": rfc3339_now()}
    if not conn.hello_done:
        raise HelloRequired("send 'hello' first")
    if isinstance(cmd, Refresh):
        return _refresh(conn, cmd)
    if isinstance(cmd, Subscribe):
        conn.auth.check_subscribe(cmd.topic, history=cmd.wants_history or cmd.group is not None)
        if cmd.group is not None:
            if cmd.dead_letter_topic is not None:
                conn.auth.check(Operation.PUBLISH, cmd.dead_letter_topic)
            settings = _group_settings(conn, cmd)
            hub.spawn(_join_group(conn, cmd, settings))
            return _NO_REPLY
        if cmd.wants_history or _durable_exact(conn, cmd.topic):
            # A durable exact topic always goes through the recovery path (with nothing to
            # replay when no history was asked for), so the reply carries the position the
            # subscription starts after and a client can resume from it at once.
            sub = _subscribe_recovering(conn, cmd)
            hub.spawn(_recover_one(conn, sub, cmd))
            return _NO_REPLY
        hub.subscribe(conn, cmd.topic, cmd.policy, cmd.key_header)
        return {"topic": cmd.topic}
    if isinstance(cmd, Unsubscribe):
        if cmd.group is not None:
            if hub.groups is None or not hub.groups.leave(conn, (cmd.topic, cmd.group)):
                raise NotSubscribed(f"not a member of group {cmd.group!r} on {cmd.topic!r}")
            return {"topic": cmd.topic, "group": cmd.group}
        hub.unsubscribe(conn, cmd.topic)
        return {"topic": cmd.topic}
    if isinstance(cmd, Ack | Nack):
        if hub.groups is None:
            raise NotInFlight("this node has no consumer groups (no durable topics)")
        key = (cmd.topic, cmd.group)
        if isinstance(cmd, Ack):
            hub.groups.ack(conn, key, cmd.seq)
        else:
            hub.groups.nack(conn, key, cmd.seq, cmd.delay, cmd.reason)
        return {"topic": cmd.topic, "group": cmd.group, "seq": cmd.seq}
    if isinstance(cmd, PresenceQuery):
        conn.auth.check_subscribe(presence_topic(cmd.session))
        hub.spawn(_presence(conn, cmd))
        return _NO_REPLY
    raise AssertionError(f"unhandled command {cmd!r}")


async def _presence(conn: Connection, cmd: PresenceQuery) -> None:
    try:
        result = await presence_for(conn.hub).query(cmd.session)
    except AgentcastError as exc:
        _send_error(conn, cmd.id, exc)
        return
    if cmd.id is not None:
        conn.send_control(ws_text_frame(ok_reply(cmd.id, result)))


def _group_settings(conn: Connection, cmd: Subscribe) -> GroupSettings:
    hub = conn.hub
    if hub.groups is None or hub.durability.rule_for(cmd.topic) is None:
        raise NotDurable(f"{cmd.topic!r} is not a durable topic; consumer groups need one")
    config = hub.config
    return GroupSettings(
        ack_timeout=cmd.ack_timeout or config.group_ack_timeout,
        max_deliver=cmd.max_deliver or config.group_max_deliver,
        max_in_flight=cmd.max_in_flight or config.group_max_in_flight,
        key_header=cmd.key_header,
        dead_letter_topic=cmd.dead_letter_topic,
    )


async def _join_group(conn: Connection, cmd: Subscribe, settings: GroupSettings) -> None:
    groups = conn.hub.groups
    assert groups is not None and cmd.group is not None
    if (cmd.topic, cmd.group) in conn.groups:
        _reply_ok(conn, cmd.id, {"topic": cmd.topic, "group": cmd.group})
        return
    try:
        runner = await groups.join(conn, cmd.topic, cmd.group, settings)
        if runner is None:  # the group runs on another node of the cluster
            _reply_ok(
                conn,
                cmd.id,
                {
                    "topic": cmd.topic,
                    "group": cmd.group,
                    "floor": None,
                    "ack_timeout": settings.ack_timeout,
                    "max_deliver": settings.max_deliver,
                    "max_in_flight": settings.max_in_flight,
                },
            )
            return
    except Exception as exc:
        _send_error(
            conn,
            cmd.id,
            exc
            if isinstance(exc, AgentcastError)
            else Unavailable(f"loading group progress failed: {exc}"),
        )
        return
    group = runner.group
    _reply_ok(
        conn,
        cmd.id,
        {
            "topic": cmd.topic,
            "group": cmd.group,
            "floor": group.floor,
            "ack_timeout": group.settings.ack_timeout,
            "max_deliver": group.settings.max_deliver,
            "max_in_flight": group.settings.max_in_flight,
        },
    )


def _reply_durable(conn: Connection, command_id: CommandId, ack: bool, outcome: Outcome) -> None:
    """The reply to a durable publish, once the log reports its outcome (after the commit
    and the batch's fan-out); acks leave together after the batch (:meth:`Hub.queue_ack`)."""
    if isinstance(outcome, Exception):
        _send_error(conn, command_id, outcome)
    elif ack and command_id is not None:
        event = outcome.event
        result = {
            "id": event.id,
            "topic": event.topic,
            "seq": event.seq,
            "epoch": event.epoch,
            "lamport": event.lamport,
            "duplicate": outcome.duplicate,
        }
        conn.hub.queue_ack(conn, ws_text_frame(ok_reply(command_id, result)))


def _refresh(conn: Connection, cmd: Refresh) -> object:
    """Swap the connection's credential; subscriptions the new one no longer allows end."""
    principal = conn.auth.refresh(cmd.token)
    revoked = []
    for pattern in list(conn.subscriptions):
        try:
            conn.auth.check_subscribe(pattern)
        except AgentcastError:
            conn.hub.unsubscribe(conn, pattern)
            revoked.append(pattern)
    groups = conn.hub.groups
    for key in list(conn.groups):
        try:
            conn.auth.check_subscribe(key[0], history=True)
        except AgentcastError:
            if groups is not None:
                groups.leave(conn, key)
            revoked.append(f"{key[0]}#{key[1]}")
    return {"expires_at": principal.expires_at, "revoked": revoked}


def _hello(conn: Connection, cmd: Hello) -> object:
    hub = conn.hub
    if conn.hello_done:
        raise AlreadyHello("'hello' was already accepted on this connection")
    try:
        principal = conn.auth.hello(cmd.token)
    except (Unauthorized, TooManyConnections) as exc:
        _send_error(conn, cmd.id, exc)
        assert exc.close_code is not None
        hub.close(conn, CloseCode(exc.close_code), exc.code, flush=True)
        return _NO_REPLY
    conn.hello_done = True
    conn.client = cmd.client
    result: dict[str, Any] = {
        "connection": conn.id,
        "node": hub.node_id,
        "protocol": PROTOCOL_VERSION,
        "heartbeat_interval": hub.config.heartbeat_interval,
        "limits": {
            "max_subscriptions": hub.config.max_subscriptions,
            "max_payload_bytes": hub.config.max_payload_bytes,
            "max_queue_messages": hub.config.max_queue_messages,
        },
        "resume": {},
        "principal": {
            "subject": principal.subject,
            "tenant": principal.tenant,
            "expires_at": principal.expires_at,
        },
    }
    result["limits"].update(conn.auth.limits())
    if not cmd.resume:
        return result
    subs: list[tuple[Subscription, Subscribe]] = []
    for topic, position in cmd.resume.items():
        request = Subscribe(cmd.id, topic, since=position)
        try:
            conn.auth.check_subscribe(topic, history=True)
            subs.append((_subscribe_recovering(conn, request), request))
        except AgentcastError as exc:
            result["resume"][topic] = {"error": exc.to_dict()}
    hub.spawn(_resume_all(conn, cmd.id, result, subs))
    return _NO_REPLY


def _durable_exact(conn: Connection, topic: str) -> bool:
    hub = conn.hub
    return (
        bool(hub.durability)
        and not is_pattern(topic)
        and (hub.durability.rule_for(topic) is not None)
    )


def _subscribe_recovering(conn: Connection, cmd: Subscribe) -> Subscription:
    """Index a subscription that parks live events until its history has been sent."""
    hub = conn.hub
    if is_pattern(cmd.topic) or hub.durability.rule_for(cmd.topic) is None:
        raise NotDurable(f"{cmd.topic!r} is not a durable topic; it keeps no history")
    sub = hub.subscribe(conn, cmd.topic, cmd.policy, cmd.key_header)
    sub.recovering = []
    conn.recovering[cmd.topic] = sub
    return sub


async def _plan(conn: Connection, sub: Subscription, cmd: Subscribe) -> RecoveryPlan:
    hub = conn.hub
    rule = hub.durability.rule_for(cmd.topic)
    assert rule is not None
    try:
        return await plan_recovery(hub, sub, cmd, rule)
    except Exception as exc:
        if conn.subscriptions.get(cmd.topic) is sub:
            hub.unsubscribe(conn, cmd.topic)
        if isinstance(exc, AgentcastError):
            raise
        raise Unavailable(f"history store failed: {exc}") from exc


async def _recover_one(conn: Connection, sub: Subscription, cmd: Subscribe) -> None:
    try:
        plan = await _plan(conn, sub, cmd)
    except AgentcastError as exc:
        _send_error(conn, cmd.id, exc)
        return
    _reply_ok(conn, cmd.id, plan.reply())
    await run_replay(conn.hub, plan)


async def _resume_all(
    conn: Connection,
    command_id: CommandId,
    result: dict[str, Any],
    subs: list[tuple[Subscription, Subscribe]],
) -> None:
    outcomes = await asyncio.gather(
        *(_plan(conn, sub, request) for sub, request in subs), return_exceptions=True
    )
    plans: list[RecoveryPlan] = []
    for (_, request), outcome in zip(subs, outcomes, strict=True):
        if isinstance(outcome, RecoveryPlan):
            plans.append(outcome)
            result["resume"][request.topic] = outcome.reply()
        else:
            error = outcome if isinstance(outcome, AgentcastError) else Unavailable(str(outcome))
            result["resume"][request.topic] = {"error": error.to_dict()}
    _reply_ok(conn, command_id, result)
    # Each topic replays on its own, so one long history never holds back another
    # topic's parked live events.
    for plan in plans:
        conn.hub.spawn(run_replay(conn.hub, plan))
