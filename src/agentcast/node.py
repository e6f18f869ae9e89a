"""Composition root: one agentcast node wired from a :class:`ServerConfig`.

Lifecycle: :meth:`Node.start` opens the history store (only when some topics are durable),
binds the WebSocket and HTTP listeners and only then reports ready; :meth:`Node.stop`
reports not-ready, stops accepting, lets pending durable publishes commit, closes every
connection with code 4000 (reconnect) after flushing what is queued, waits for sockets to
drain up to ``shutdown_grace`` seconds, and closes the store. ``async with Node(config) as
node`` does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from types import TracebackType

from aiohttp import web

from agentcast.brokers.base import Broker
from agentcast.brokers.factory import open_broker
from agentcast.config import ConfigError, ServerConfig
from agentcast.hub.cluster import ClusterLink
from agentcast.hub.durability import DurabilityRules
from agentcast.hub.group_relay import GroupRelay
from agentcast.hub.hub import Hub
from agentcast.hub.presence import presence_for
from agentcast.metrics import make_registry, render
from agentcast.orchestration.embedded import EmbeddedOrchestrator
from agentcast.orchestration.workflow import Workflow, import_workflows
from agentcast.protocol.codes import CloseCode
from agentcast.protocol.envelope import rfc3339_at
from agentcast.security.guard import Security
from agentcast.security.metrics import SecurityCollector
from agentcast.storage.base import HistoryStore
from agentcast.storage.consumers import ConsumerStore
from agentcast.transport.http import make_http_app
from agentcast.transport.ws import WS_PATH, WebSocketConnection, start_websocket_server

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 1.0


class Node:
    """One agentcast server process's worth of state."""

    def __init__(self, config: ServerConfig | None = None, *, broker: Broker | None = None):
        """``broker`` overrides the ``broker`` config key (tests link nodes in-process)."""
        self.config = config or ServerConfig()
        self.broker = broker
        self.node_id = self.config.node_id or f"n{secrets.token_hex(3)}"
        self.hub: Hub | None = None
        self.ready = False
        self.ws_port = 0
        self.http_port = 0
        self._ws_server: asyncio.AbstractServer | None = None
        self._http_runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._sockets: set[WebSocketConnection] = set()
        self._background: list[asyncio.Task[None]] = []
        self._tls = False
        self.drain_requested = asyncio.Event()
        self.history: HistoryStore | None = None
        self.consumers: ConsumerStore | None = None
        self.orchestrator: EmbeddedOrchestrator | None = None

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self._tls else "ws"
        return f"{scheme}://{self.config.host}:{self.ws_port}{WS_PATH}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.config.host}:{self.http_port}"

    async def start(self) -> None:
        """Bind both listeners; ready once both accept connections."""
        loop = asyncio.get_running_loop()
        config = self.config
        workflows = self._load_workflows()
        security = Security(config.security)
        ssl_context = security.ssl_context()
        self._tls = ssl_context is not None
        if not security.enabled:
            log.warning(
                "authentication is OFF: any client may publish and subscribe to any topic "
                "of any tenant; set [security] auth for anything but local development"
            )
        hub = self.hub = Hub(config.hub, loop.call_soon, node_id=self.node_id, security=security)
        if config.durable:
            await self._open_history(hub)
        if self.broker is None and config.broker:
            self.broker = open_broker(config.broker)
        if self.broker is not None:
            link = hub.cluster = ClusterLink(
                hub,
                self.broker,
                heartbeat_interval=config.cluster_heartbeat,
                member_timeout=config.member_timeout,
            )
            if hub.groups is not None:
                hub.groups.relay = GroupRelay(hub.groups, link)
            await self.broker.start(self.node_id, link)
            self._background.append(asyncio.create_task(link.run(), name="agentcast-cluster"))
        else:
            presence_for(hub)  # a single node owns every tenant's presence
        registry = make_registry(hub)
        registry.register(SecurityCollector(security))
        self._ws_server = await start_websocket_server(
            hub,
            config.host,
            config.port,
            self._sockets,
            max_frame_bytes=config.max_frame_bytes,
            ssl=ssl_context,
        )
        self.ws_port = self._ws_server.sockets[0].getsockname()[1]
        app = make_http_app(
            hub,
            ready=self.is_ready,
            metrics=lambda: render(registry),
            ws_url=lambda: self.ws_url,
            drain=self.request_drain,
        )
        self._http_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._http_runner.setup()
        site = web.TCPSite(
            self._http_runner, config.host, config.http_port, ssl_context=ssl_context
        )
        await site.start()
        server = site._server
        assert server is not None
        self.http_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._sweeper = asyncio.create_task(self._sweep(), name="agentcast-sweep")
        self.ready = True
        log.info("agentcast node %s ready: %s and %s", self.node_id, self.ws_url, self.http_url)
        if workflows:
            self.orchestrator = EmbeddedOrchestrator(
                workflows,
                dsn=config.workflows_db,
                url=self.ws_url,
                token=config.workflows_token or None,
            )
            self.orchestrator.start()

    def _load_workflows(self) -> list[Workflow]:
        """The workflows the ``workflows`` config key names (none when it is empty); run
        against this node once it is ready (see :mod:`agentcast.orchestration.embedded`)."""
        if not self.config.workflows:
            return []
        try:
            return import_workflows(self.config.workflows)
        except ValueError as exc:
            raise ConfigError(f"config key 'workflows': {exc}") from None

    def request_drain(self) -> None:
        """Report not-ready at once and ask whoever runs the node to stop it
        (:attr:`drain_requested`); ``agentcast serve`` then drains and exits."""
        self.ready = False
        self.drain_requested.set()

    def is_ready(self) -> bool:
        """Listening, not draining, and (in a cluster) the broker is reachable."""
        cluster = self.hub.cluster if self.hub is not None else None
        return self.ready and (cluster is None or cluster.healthy)

    async def _open_history(self, hub: Hub) -> None:
        from agentcast.storage.factory import consumer_store_for, open_history_store

        store = open_history_store(self.config.history, dedupe_window=self.config.hub.dedupe_window)
        await store.open()
        self.history = store
        consumers = consumer_store_for(store)
        await consumers.open()
        self.consumers = consumers
        durable_log = hub.enable_durability(DurabilityRules(self.config.durable), store, consumers)
        self._background.append(asyncio.create_task(durable_log.run(), name="agentcast-commit"))
        self._background.append(asyncio.create_task(self._retain(), name="agentcast-retention"))

    async def _retain(self) -> None:
        """Apply each durable rule's retention to the store every ``retention_interval``."""
        hub = self.hub
        store = self.history
        assert hub is not None and store is not None
        while True:
            await asyncio.sleep(self.config.retention_interval)
            try:
                for topic in await store.topics():
                    rule = hub.durability.rule_for(topic)
                    if rule is None:
                        continue
                    older_than = None
                    if rule.max_age is not None:
                        older_than = rfc3339_at(time.time() - rule.max_age)
                    await store.trim(topic, rule.max_events, older_than)
            except Exception:
                log.exception(
                    "retention pass failed; retrying in %ss", self.config.retention_interval
                )

    async def stop(self) -> None:
        """Drain and close; safe to call twice."""
        self.ready = False
        if self.orchestrator is not None:
            await self.orchestrator.stop()
            self.orchestrator = None
        if self._ws_server is not None:
            self._ws_server.close()
        if self.hub is not None and self.hub.durable_log is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.hub.durable_log.drain(), self.config.shutdown_grace)
            # Whatever arrives from now on (HTTP is still open) is refused at once.
            self.hub.durable_log.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.hub is not None:
            self.hub.close_all(CloseCode.SHUTDOWN, "server shutting down")
            await self._wait_drained(self.config.shutdown_grace)
            await self.hub.cancel_tasks()
            if self.hub.groups is not None:
                await self.hub.groups.save_all()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        if self.broker is not None:
            await self.broker.close()
        if self.history is not None:
            await self.history.close()
            self.history = None
        if self.consumers is not None:
            await self.consumers.close()
            self.consumers = None
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None
        if self._ws_server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ws_server.wait_closed(), self.config.shutdown_grace)
            self._ws_server = None

    async def _wait_drained(self, grace: float) -> None:
        """Wait until every socket has closed, at most ``grace`` seconds."""
        sockets = [sock.transport for sock in self._sockets if sock.transport is not None]
        if not sockets:
            return
        waits = [asyncio.ensure_future(t.wait_disconnected()) for t in sockets]
        _, pending = await asyncio.wait(waits, timeout=grace)
        for sock in list(self._sockets):
            if sock.transport is not None:
                sock.transport.disconnect(graceful=False)
        for fut in pending:
            fut.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _sweep(self) -> None:
        hub = self.hub
        assert hub is not None
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            hub.sweep(hub.clock())

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
