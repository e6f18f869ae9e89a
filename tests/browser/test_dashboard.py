"""The dashboard in headless Chromium against ``agentcast demo`` (a subprocess with a small
workload and a durable chat per session): the demo's agents and non-zero rates show up, the
session view draws the messages between agents with causation links, and the replay steps
through the chat's history both ways."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page

from agentcast.demo.workload import agent_names
from tests.browser.conftest import SCREENSHOTS, PageErrors, screenshot

# Small by default; fuller (and slower) when refreshing the screenshots of the docs.
SESSIONS = 3 if SCREENSHOTS else 2
AGENTS = 6 if SCREENSHOTS else 4
POLLS = 45 if SCREENSHOTS else 4
MESSAGES = 30 if SCREENSHOTS else 12
WAIT_MS = 90_000 if SCREENSHOTS else 20_000
START_TIMEOUT = 30.0


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[str]:
    """``agentcast demo`` running; yields the dashboard URL it printed."""
    config = tmp_path / "agentcast.toml"
    config.write_text(
        f'history = "sqlite:///{tmp_path / "history.db"}"\n'
        'durable = ["demo.*.chat"]\n'
        'log_level = "warning"\n'
    )
    command = [
        sys.executable,
        "-c",
        "from agentcast.cli import main; main()",
        "demo",
        "--port",
        "0",
        "--http-port",
        "0",
        "--sessions",
        str(SESSIONS),
        "--agents",
        str(AGENTS),
        "--rate",
        "3",
        "--no-live",
        "--config",
        str(config),
    ]
    errors = tmp_path / "demo.stderr"
    with errors.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        url = None
        async with asyncio.timeout(START_TIMEOUT):
            while url is None:
                raw = await process.stdout.readline()
                if not raw:
                    await process.wait()
                    output = "".join(lines) + errors.read_text()
                    pytest.fail(f"agentcast demo exited early:\n{output}")
                line = raw.decode()
                lines.append(line)
                found = re.search(r"^\s+dashboard\s+(\S+)", line)
                if found:
                    url = found.group(1)
        drain = asyncio.create_task(_drain(process.stdout))
        try:
            yield url
        finally:
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(START_TIMEOUT):
                code = await process.wait()
            await drain
            assert code == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def number(page: Page, selector: str) -> float:
    text = await page.locator(selector).first.inner_text()
    found = re.match(r"[\d.]+", text.replace(",", ""))
    assert found is not None, text
    return float(found.group())


@pytest.mark.timeout(240 if SCREENSHOTS else 60)
async def test_the_dashboard_shows_the_demo_agents_rates_and_messages(
    browser: BrowserContext, demo: str, tmp_path: Path
) -> None:
    page = await browser.new_page()
    errors = PageErrors(page)
    await page.goto(demo)
    names = [name for name, _ in agent_names(AGENTS)]

    # Overview: every session with its agents (presence), and traffic.
    for index in range(1, SESSIONS + 1):
        session = f"demo.session-{index}"
        for name in names:
            await page.wait_for_selector(
                f'[data-session="{session}"] [data-agent="{name}"]', timeout=WAIT_MS
            )
    await page.wait_for_function(
        """() => ['Publishes', 'Deliveries'].every(card => parseFloat(
            document.querySelector(`[data-card=${card}] .value`)?.textContent) > 0)""",
        timeout=WAIT_MS,
    )
    assert await number(page, "[data-card=Publishes] .value") > 0
    assert await number(page, "[data-card=Deliveries] .value") > 0
    assert await number(page, "[data-card=Connections] .value") >= SESSIONS * (AGENTS + 1)
    chat_rate = page.locator('[data-topic="demo.session-1.chat"] .ratebar .num')
    await page.wait_for_function(
        """() => parseFloat(document.querySelector(
            '[data-topic="demo.session-1.chat"] .ratebar .num')?.textContent) > 0""",
        timeout=WAIT_MS,
    )
    assert float(await chat_rate.inner_text()) > 0
    assert await page.locator('[data-topic="demo.session-1.chat"] .badge').inner_text() == "DURABLE"
    assert await page.locator("#latency .fill:not(.empty)").count() >= 1
    # A few polls so the throughput chart has a line to show.
    await page.wait_for_function(
        "n => Number(document.body.dataset.polls) >= n", arg=POLLS, timeout=WAIT_MS
    )
    assert "ok" in (await page.get_attribute("#stats-status", "class") or "")
    await screenshot(page, tmp_path, "dashboard.png")

    # Session view: the page subscribes with the JS client and draws who talks to whom.
    await page.click('[data-session="demo.session-1"]')
    await page.wait_for_function(
        "n => document.querySelectorAll('#live-diagram .msg').length >= n",
        arg=MESSAGES,
        timeout=WAIT_MS,
    )
    assert "ok" in (await page.get_attribute("#ws-status", "class") or "")
    # Reactions carry the id of the event they answer: a dashed link joins the two rows.
    await page.wait_for_function(
        "() => document.querySelectorAll('#live-diagram .cause').length >= 1", timeout=WAIT_MS
    )
    await page.click("#live-pause")  # the diagram stops moving while it is checked
    lanes = await page.eval_on_selector_all(
        "#live-diagram .lane-head", "heads => heads.map(h => h.dataset.lane)"
    )
    assert set(names) <= set(lanes)
    assert "chat" in lanes
    senders = await page.eval_on_selector_all(
        "#live-diagram .msg", "rows => rows.map(r => r.dataset.from)"
    )
    assert len(senders) >= MESSAGES
    agents = {s for s in senders if not s.startswith("ac://node/")}  # the node's presence
    assert agents <= set(names)
    links = await page.eval_on_selector_all(
        "#live-diagram .cause",
        """links => links.map(link => [link.dataset.from, link.dataset.to].map(id =>
            document.querySelectorAll(`#live-diagram .msg[data-id="${id}"]`).length))""",
    )
    assert links and all(ends == [1, 1] for ends in links), links
    assert await page.locator("#live-log li").count() >= MESSAGES
    await screenshot(page, tmp_path, "session.png")
    await page.click("#live-pause")

    # Replay: the durable chat's last 20 events, stepped forwards and backwards.
    await page.click("#tab-replay")
    await page.wait_for_selector(
        '#replay-topic option[value="demo.session-1.chat"]', state="attached", timeout=WAIT_MS
    )
    await page.select_option("#replay-topic", "demo.session-1.chat")
    await page.fill("#replay-last", "20")
    await page.click("#replay-load")
    await page.wait_for_function(
        "() => document.getElementById('replay-position').dataset.seq !== ''", timeout=WAIT_MS
    )
    position = page.locator("#replay-position")
    first = int(await position.get_attribute("data-seq") or "0")
    assert first >= 1
    for _ in range(3):
        await page.click("#replay-forward")
    assert int(await position.get_attribute("data-seq") or "0") == first + 3
    assert await page.locator("#replay-diagram .msg:not(.future)").count() == 4
    current = page.locator("#replay-diagram .msg.current")
    assert await current.get_attribute("data-seq") == str(first + 3)
    await page.click("#replay-back")
    assert int(await position.get_attribute("data-seq") or "0") == first + 2
    assert await page.locator("#replay-diagram .msg:not(.future)").count() == 3
    await page.click("#replay-first")
    assert int(await position.get_attribute("data-seq") or "0") == first
    detail = await page.locator("#replay-detail").inner_text()
    assert f'"seq": {first}' in detail and '"topic": "demo.session-1.chat"' in detail
    await screenshot(page, tmp_path, "replay.png", docs=False)

    # Back to the overview: the page's own connection is not counted as an agent.
    await page.click("a.brand")
    await page.wait_for_selector("#overview:not([hidden])")
    with contextlib.suppress(Exception):
        await page.close()
    assert errors.messages == []
