"""HTTP API on aiohttp: publish, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from agentcast.dashboard import add_dashboard_routes
from agentcast.errors import (
    AgentcastError,
    BadJson,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    Unavailable,
)
from agentcast.hub.hub import Hub, PublishResult
from agentcast.protocol.commands import parse_publish_fields
from agentcast.security.capabilities import Operation
from agentcast.security.errors import Forbidden, SecurityError

MAX_BODY_MARGIN = 64 * 1024


def _error(
    status: int, error: AgentcastError, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": error.to_dict()}),
        content_type="application/json",
        headers=headers,
    )


def _security_error(exc: SecurityError) -> web.Response:
    headers: dict[str, str] = {}
    if exc.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    retry_after = getattr(exc, "retry_after", None)
    if exc.http_status == 429 and retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return _error(exc.http_status, exc, headers)


def make_http_app(
    hub: Hub,
    *,
    ready: Callable[[], bool],
    metrics: Callable[[], bytes],
    ws_url: Callable[[], str | None] | None = None,
    drain: Callable[[], None] | None = None,
) -> web.Application:
    """The aiohttp application; ``ready``, ``metrics``, ``ws_url`` (where the dashboard
    page connects) and ``drain`` (asks the node to drain and exit) come from the node."""

    async def publish(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, PayloadTooLarge("request body is too large"))
        try:
            try:
                fields: Any = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise BadJson(f"body is not valid JSON: {exc}") from None
            if not isinstance(fields, dict):
                raise BadJson("body must be a JSON object")
            fields.pop("ack", None)
            principal = hub.security.authenticate_http(request.headers.get("Authorization"))
            cmd = parse_publish_fields(None, fields)
            hub.security.check_http(principal, Operation.PUBLISH, cmd.topic)
            name = request.headers.get("X-Agentcast-Client", "http")[:128]
            published = hub.publish_any(cmd, f"ac://http/{name}")
            if isinstance(published, asyncio.Future):
                result = PublishResult.from_append(await published)
            else:
                result = published
        except SecurityError as exc:
            hub.stats.errors += 1
            return _security_error(exc)
        except PayloadTooLarge as exc:
            return _error(413, exc)
        except ProtocolError as exc:
            hub.stats.errors += 1
            return _error(400, exc)
        except (Overloaded, Unavailable) as exc:
            hub.stats.errors += 1
            return _error(503, exc)
        return web.Response(body=orjson.dumps(result.to_dict()), content_type="application/json")

    async def drain_view(request: web.Request) -> web.Response:
        """``POST /v1/admin/drain``: stop taking connections, move clients elsewhere, exit.
        Needs an admin API key while authentication is on."""
        try:
            principal = hub.security.authenticate_http(request.headers.get("Authorization"))
            if not principal.admin:
                raise Forbidden("draining the node needs an admin API key")
        except SecurityError as exc:
            return _security_error(exc)
        if drain is None:
            return web.Response(status=404)
        drain()
        return web.Response(status=202, body=b'{"draining":true}', content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=metrics(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=hub.config.max_payload_bytes + MAX_BODY_MARGIN)
    app.router.add_post("/v1/publish", publish)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/admin/drain", drain_view)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    add_dashboard_routes(app, hub, ws_url=ws_url)
    return app
