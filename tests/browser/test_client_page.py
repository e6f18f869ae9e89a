"""The JS client in a real browser page: publish and receive, and a reconnect that resumes
a durable topic without loss after the node restarts on the same port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import BrowserContext, Page

from agentcast.config import ServerConfig
from agentcast.hub.durability import DurableRule
from agentcast.node import Node
from tests.browser.conftest import PageErrors
from tests.wsclient import RawClient

WAIT_MS = 20_000

# Runs in the page: load the client served by the node and keep everything on `window.t`.
SETUP = """
async ({ws, topic, options}) => {
  const { Client } = await import("/clients/agentcast.js");
  const t = { seqs: [], events: [], states: [], gate: null, release: null };
  window.t = t;
  t.hold = () => { t.gate = new Promise((resolve) => { t.release = resolve; }); };
  t.client = new Client(ws, {
    name: "page",
    backoffInitial: 0.05,
    backoffMax: 0.2,
    maxReconnectAttempts: 10000,
    getToken: async () => { if (t.gate) await t.gate; return "page-token"; },
    ...options,
  });
  t.client.on("state", (state) => t.states.push(state));
  await t.client.connect();
  t.sub = await t.client.subscribe(topic, {
    onEvent: (event) => { t.seqs.push(event.seq); t.events.push(event); },
  });
  return t.client.connectionId;
}
"""


async def open_page(browser: BrowserContext, node: Node, topic: str) -> tuple[Page, PageErrors]:
    page = await browser.new_page()
    errors = PageErrors(page)
    await page.goto(f"{node.http_url}/healthz")
    connection = await page.evaluate(SETUP, {"ws": node.ws_url, "topic": topic, "options": {}})
    assert isinstance(connection, str) and connection
    return page, errors


async def http_publish(node: Node, topic: str, payload: Any) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{node.http_url}/v1/publish", json={"topic": topic, "payload": payload}) as r,
    ):
        assert r.status == 200, await r.text()
        result: dict[str, Any] = await r.json()
        return result


async def received(page: Page, count: int) -> None:
    await page.wait_for_function("n => window.t.seqs.length >= n", arg=count, timeout=WAIT_MS)


async def test_a_page_publishes_and_receives_through_the_node(browser: BrowserContext) -> None:
    async with Node(ServerConfig(port=0, http_port=0)) as node:
        listener = await RawClient.open(node.ws_url, "listener")
        await listener.call("subscribe", topic="acme.page.>")
        page, errors = await open_page(browser, node, "acme.page.>")
        ack = await page.evaluate(
            """async () => await window.t.client.publish("acme.page.chat", {text: "from the page"},
                {headers: {key: "k"}, correlationId: "run-1"})"""
        )
        assert ack["topic"] == "acme.page.chat" and ack["seq"] == 1 and not ack["duplicate"]
        event = await listener.next_event()
        assert event["id"] == ack["id"]
        assert event["payload"] == {"text": "from the page"}
        assert event["source"] == "ac://client/page"
        assert event["correlation_id"] == "run-1"
        await http_publish(node, "acme.page.chat", "from python")
        await received(page, 2)
        events = await page.evaluate("window.t.events.map(e => [e.seq, e.payload])")
        assert events == [[1, {"text": "from the page"}], [2, "from python"]]
        refused = await page.evaluate(
            """async () => { try { await window.t.client.publish("acme.*", 1); return null; }
                catch (error) { return [error.name, error.code]; } }"""
        )
        assert refused == ["ClientError", "wildcard_publish"]
        await page.evaluate("window.t.client.close()")
        await listener.close()
        assert errors.messages == []


async def test_a_reconnect_in_the_page_resumes_without_loss(
    browser: BrowserContext, tmp_path: Path
) -> None:
    topic = "acme.run.log"
    history = f"sqlite:///{tmp_path / 'history.db'}"
    first = ServerConfig(port=0, http_port=0, history=history, durable=(DurableRule("acme.*.log"),))
    async with Node(first) as node:
        page, errors = await open_page(browser, node, topic)
        for n in range(1, 31):
            await http_publish(node, topic, {"n": n})
        await received(page, 30)
        # Reconnect attempts wait at the gate until the node has more to replay.
        await page.evaluate("window.t.hold()")
        ws_port, http_port = node.ws_port, node.http_port
    again = ServerConfig(
        port=ws_port, http_port=http_port, history=history, durable=(DurableRule("acme.*.log"),)
    )
    async with Node(again) as node:
        for n in range(31, 61):
            await http_publish(node, topic, {"n": n})
        await page.evaluate("window.t.release()")
        await received(page, 60)
        # A last live event: anything duplicated by the resume would arrive before it.
        await http_publish(node, topic, {"n": 61})
        await received(page, 61)
        seqs = await page.evaluate("window.t.seqs")
        payloads = await page.evaluate("window.t.events.map(e => e.payload.n)")
        state = await page.evaluate(
            """() => ({reconnects: window.t.client.reconnects, recovered: window.t.sub.recovered,
                gaps: window.t.sub.gaps, states: window.t.states})"""
        )
        await page.evaluate("window.t.client.close()")
    assert seqs == list(range(1, 62)), "every seq exactly once, in order"
    assert payloads == list(range(1, 62))
    assert state["reconnects"] == 1
    assert state["recovered"] is True and state["gaps"] == 0
    assert "reconnecting" in state["states"]
    assert errors.messages == []
