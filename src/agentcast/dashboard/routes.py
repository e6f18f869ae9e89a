"""The dashboard's HTTP routes on the node's aiohttp application.

* ``GET /dashboard``: the page (static HTML; it loads its script and the JS client).
* ``GET /dashboard/static/<file>``: the page's CSS and JavaScript.
* ``GET /clients/agentcast.js``: the JavaScript client (an ES module) for any web page.
* ``GET /v1/stats``: a JSON snapshot of the node (see :mod:`agentcast.dashboard.snapshot`).
  It spans every tenant, so when authentication is on it needs an admin API key
  (``Authorization: Bearer <key>``): ``401`` without a valid key, ``403`` for a key scoped
  to one tenant. The page sends the key given in its ``key`` query parameter.

:func:`add_dashboard_routes` also installs a :class:`~agentcast.dashboard.traffic.TopicTraffic`
as the hub's publication observer, which is what the per-topic rates and the sessions come
from. The page finds the WebSocket endpoint in its ``ws`` query parameter, else in the
snapshot's ``ws_url`` (set when the node passes ``ws_url``), else on the HTTP port minus one
(the default layout: 8765 and 8766).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web

from agentcast.dashboard.rates import NodeSampler
from agentcast.dashboard.snapshot import StatsSource, build_stats
from agentcast.dashboard.traffic import TopicTraffic
from agentcast.hub.hub import Hub
from agentcast.security.errors import Forbidden, SecurityError

STATIC_DIR = Path(__file__).parent / "static"
CLIENT_FILE = STATIC_DIR / "agentcast.js"
NO_CACHE = {"Cache-Control": "no-cache"}


def dashboard_url(http_url: str, ws_url: str) -> str:
    """The dashboard's address on a node; it names the WebSocket URL in the ``ws`` query
    parameter unless the page would find it by itself (WebSocket port = HTTP port - 1)."""
    http = urlsplit(http_url)
    ws = urlsplit(ws_url)
    if ws.hostname == http.hostname and http.port is not None and ws.port == http.port - 1:
        return f"{http_url}/dashboard"
    return f"{http_url}/dashboard?ws={quote(ws_url, safe=':/')}"


def add_dashboard_routes(
    app: web.Application,
    hub: Hub,
    *,
    ws_url: Callable[[], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TopicTraffic:
    """Add the dashboard's routes to ``app`` and start counting ``hub``'s publications.

    ``ws_url`` returns the node's WebSocket URL once it is known (it is reported in
    ``/v1/stats``). Returns the per-topic counter now installed as ``hub.observer``.
    """
    traffic = TopicTraffic(clock=clock)
    hub.observer = traffic
    started = clock()
    source = StatsSource(hub, traffic, NodeSampler(hub.stats, started), started)

    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)

    async def slash(request: web.Request) -> web.StreamResponse:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPPermanentRedirect(f"/dashboard{query}")

    async def client_module(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            CLIENT_FILE,
            headers={**NO_CACHE, "Content-Type": "text/javascript; charset=utf-8"},
        )

    async def stats(request: web.Request) -> web.Response:
        try:
            principal = hub.security.authenticate_http(request.headers.get("Authorization"))
            if not principal.admin:
                raise Forbidden("the node's stats span every tenant: use an admin API key")
        except SecurityError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else {}
            body = orjson.dumps({"error": exc.to_dict()})
            return web.Response(
                status=exc.http_status, body=body, content_type="application/json", headers=headers
            )
        source.ws_url = ws_url() if ws_url is not None else None
        body = orjson.dumps(build_stats(source, clock()))
        return web.Response(body=body, content_type="application/json", headers=NO_CACHE)

    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/", slash)
    app.router.add_static("/dashboard/static", STATIC_DIR)
    app.router.add_get("/clients/agentcast.js", client_module)
    app.router.add_get("/v1/stats", stats)
    return traffic
