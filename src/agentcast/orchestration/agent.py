"""The agent side of workflow commands: run a handler per command, report the result.

A workflow's :class:`~agentcast.orchestration.intents.Command` is an event on the agents'
command topic with headers ``command`` (its name), ``reply_to``, ``workflow``,
``instance`` and ``intent``. :class:`AgentWorker` consumes that topic through a consumer
group (see :class:`~agentcast.client.worker.Worker` for the delivery contract) and, for
each command:

* runs ``handlers[name](args, envelope)``;
* on return, publishes the result to ``reply_to`` with headers ``status: ok``,
  ``command`` and ``intent`` (copied from the command), ``correlation_id`` copied from the
  command and ``causation_id`` = the command's envelope id, then acks;
* on :class:`CommandFailed` (a failure the workflow should hear about), publishes the same
  with ``status: error`` and ``{"error": message}`` as payload, then acks;
* on any other exception, nacks: the command is delivered again after a backoff, and
  dead-lettered after the group's ``max_deliver`` attempts (the workflow learns of it
  through an expectation that expires);
* an unknown command name is reported as ``status: error`` at once.

The result is published with the idempotency key ``result:<command id>``, so a handler that
runs twice (a redelivery after a crash before the ack) reports once within the node's
dedupe window; pass ``idempotent=`` (see :class:`~agentcast.client.worker.Worker`) to
also skip the second run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from agentcast.client.worker import Worker
from agentcast.protocol.envelope import Envelope

if TYPE_CHECKING:
    from agentcast.client.client import Client

CommandHandler = Callable[[Any, Envelope], Awaitable[Any]]

OK = "ok"
ERROR = "error"


class CommandFailed(Exception):
    """Raised by a command handler to report a failure to the workflow (no retry)."""


class AgentWorker:
    """Runs ``handlers`` (command name to async handler) for the commands on ``topic``.

    ``options`` go to :class:`~agentcast.client.worker.Worker` (``concurrency``,
    ``idempotent``, ``ack_timeout``, ``max_deliver``, ...). Counters: :attr:`ok`,
    :attr:`errors`.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        handlers: Mapping[str, CommandHandler],
        *,
        group: str = "agents",
        **options: Any,
    ) -> None:
        self.client = client
        self.handlers = dict(handlers)
        self.ok = 0
        self.errors = 0
        self.worker = Worker(client, topic, group, self._handle, **options)

    async def run(self) -> None:
        """Process commands until :meth:`stop` (see :meth:`Worker.run`)."""
        await self.worker.run()

    def stop(self) -> None:
        self.worker.stop()

    async def __aenter__(self) -> AgentWorker:
        await self.worker.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.worker.__aexit__(exc_type, exc, tb)

    async def _handle(self, command: Envelope) -> None:
        name = command.headers.get("command", "")
        handler = self.handlers.get(name)
        if handler is None:
            await self._reply(command, ERROR, {"error": f"unknown command {name!r}"})
            return
        try:
            result = await handler(command.payload, command)
        except CommandFailed as exc:
            await self._reply(command, ERROR, {"error": str(exc)})
            return
        await self._reply(command, OK, result)

    async def _reply(self, command: Envelope, status: str, payload: Any) -> None:
        if status == OK:
            self.ok += 1
        else:
            self.errors += 1
        reply_to = command.headers.get("reply_to")
        if not reply_to:
            return
        headers = {"status": status, "command": command.headers.get("command", "")}
        for name in ("intent", "workflow", "instance"):
            if name in command.headers:
                headers[name] = command.headers[name]
        await self.client.publish(
            reply_to,
            payload,
            headers=headers,
            idempotency_key=f"result:{command.id}",
            correlation_id=command.correlation_id,
            causation_id=command.id,
        )
