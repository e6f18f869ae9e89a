"""How the demo shows itself: a live ``rich`` panel, plain per-second lines, a summary.

:class:`LiveView` redraws one panel (sessions table, node figures) on every
:meth:`~LiveView.update`, sized to the terminal: sessions that do not fit are folded into
one "more" line. :class:`PlainView` prints one line per update instead, for logs, pipes and
tests. Neither owns a timer: the caller decides when to update.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agentcast.demo.stats import NodeRow, Snapshot, Summary, TrafficRow

SUBTITLES = {"connecting": "Ctrl-C to stop", "running": "Ctrl-C to stop", "stopped": "stopped"}
# Lines of the panel that are not session rows (borders, header, table chrome, node grid).
FIXED_LINES = 16
# Below this terminal width the sessions table drops a column.
NARROW = 96


@dataclass(slots=True, frozen=True)
class Banner:
    """Where the node listens."""

    node_id: str
    ws_url: str
    http_url: str

    @property
    def metrics_url(self) -> str:
        return f"{self.http_url}/metrics"

    def lines(self) -> list[str]:
        return [
            f"agentcast demo: node {self.node_id}",
            f"  websocket  {self.ws_url}",
            f"  http       {self.http_url}  (metrics: {self.metrics_url})",
        ]


def fmt_ms(value: float | None) -> str:
    """Milliseconds with a precision that suits their size; ``-`` when unknown."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def fmt_rate(value: float) -> str:
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


SHORT_POLICY = {"drop_oldest": "oldest", "drop_newest": "newest", "latest_per_key": "per-key"}


def fmt_drops(node: NodeRow, *, short: bool = False) -> str:
    """Total drops, then the count per policy (``short`` names for the live panel)."""
    if not node.drops_total:
        return "0"
    parts = ", ".join(
        f"{SHORT_POLICY.get(policy, policy) if short else policy} {count:,}"
        for policy, count in sorted(node.drops.items())
    )
    return f"{node.drops_total:,} ({parts})"


def plain_line(snapshot: Snapshot) -> str:
    """One log line: client-side totals, then the node's own figures."""
    total = snapshot.total
    node = snapshot.node
    return (
        f"[{snapshot.elapsed:6.1f}s] {snapshot.phase:<10} "
        f"agents {total.agents_connected}/{total.agents_total} "
        f"observers {total.observers_connected}/{total.observers_total} | "
        f"pub/s {fmt_rate(total.publish_rate)} deliv/s {fmt_rate(total.delivery_rate)} "
        f"p50 {fmt_ms(total.p50_ms)}ms p99 {fmt_ms(total.p99_ms)}ms | "
        f"node conns {node.connections} subs {node.subscriptions} "
        f"deliveries {node.deliveries} writes {node.writes} "
        f"({node.deliveries_per_write:.2f}/write) drops {node.drops_total} "
        f"queue max {node.queue_now} peak {node.queue_peak}"
    )


def summary_lines(summary: Summary) -> list[str]:
    """The final report; ``lost``/``missing`` lines appear only when non-zero."""
    node = summary.node
    lines = [
        f"summary: ran {summary.elapsed:.1f} s, "
        f"{summary.sessions} sessions x {summary.agents_per_session} agents",
        f"  connected   agents {summary.agents_connected}/{summary.agents_total}, "
        f"observers {summary.observers_connected}/{summary.observers_total} "
        f"(node connections opened {summary.connections_opened})",
        f"  traffic     published {summary.published}, delivered {summary.delivered} "
        f"(agents {summary.delivered_agents}, observers {summary.delivered_observers})",
        f"  latency     publish-to-receive p50 {fmt_ms(summary.p50_ms)} ms, "
        f"p99 {fmt_ms(summary.p99_ms)} ms over {summary.latency_samples} deliveries",
        f"  node        publishes {node.publishes}, deliveries {node.deliveries}, "
        f"writes {node.writes} ({node.deliveries_per_write:.2f} deliveries/write)",
        f"  dropped     {fmt_drops(node)} by slow-consumer policies, "
        f"{node.slow_disconnects} slow-consumer disconnects",
    ]
    if summary.unread:
        lines.append(f"  lost        {summary.unread} publishes had no reader subscribed")
    if summary.missing:
        lines.append(f"  missing     {summary.missing} agent deliveries never arrived")
    return lines


def _session_table(snapshot: Snapshot, max_rows: int, *, narrow: bool) -> Table:
    """Sessions then the total; ``narrow`` shortens policy names and leaves out the
    ``published`` column so the table fits 80 columns."""
    table = Table(
        box=box.HORIZONTALS,
        show_edge=False,
        expand=True,
        header_style="bold",
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    headers = ["agents", "pub/s", "deliv/s", "p50 ms", "p99 ms", "published", "delivered"]
    if narrow:
        headers.remove("published")
    table.add_column("session", no_wrap=True)
    table.add_column("dashboard", no_wrap=True)
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)

    rows = snapshot.sessions
    shown = rows if len(rows) <= max_rows else rows[: max(1, max_rows - 1)]
    for row in shown:
        table.add_row(*_cells(row, narrow=narrow))
    if len(shown) < len(rows):
        hidden = len(rows) - len(shown)
        table.add_row(Text(f"... {hidden} more", style="dim"))
    table.add_section()
    table.add_row(*_cells(snapshot.total, narrow=narrow), style="bold")
    return table


def _cells(row: TrafficRow, *, narrow: bool) -> list[RenderableType]:
    full = row.agents_connected == row.agents_total
    agents = Text(f"{row.agents_connected}/{row.agents_total}", style="green" if full else "yellow")
    if row.observers_total == 1:
        policy = SHORT_POLICY.get(row.observer_policy, row.observer_policy)
        style = "cyan" if row.observers_connected else "dim"
        dashboard = Text(policy if narrow else row.observer_policy, style=style)
    else:
        dashboard = Text(f"{row.observers_connected}/{row.observers_total} up", style="cyan")
    p99_style = "red" if row.p99_ms is not None and row.p99_ms >= 100 else ""
    cells: list[RenderableType] = [
        row.name,
        dashboard,
        agents,
        fmt_rate(row.publish_rate),
        fmt_rate(row.delivery_rate),
        fmt_ms(row.p50_ms),
        Text(fmt_ms(row.p99_ms), style=p99_style),
        f"{row.published:,}",
        f"{row.delivered:,}",
    ]
    if narrow:
        del cells[-2]
    return cells


def _node_grid(node: NodeRow) -> Table:
    grid = Table.grid(padding=(0, 2), expand=True)
    for ratio in (3, 2):
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(no_wrap=True, ratio=ratio)
    grid.add_row(
        "connections",
        f"{node.connections:,}  ({node.subscriptions:,} subscriptions)",
        "queue length",
        f"max now {node.queue_now}, peak {node.queue_peak}",
    )
    grid.add_row(
        "publishes",
        f"{node.publishes:,}  ({fmt_rate(node.publish_rate)}/s)",
        "deliveries",
        f"{node.deliveries:,}  ({fmt_rate(node.delivery_rate)}/s)",
    )
    grid.add_row(
        "writes",
        f"{node.writes:,}  ({fmt_rate(node.write_rate)}/s)",
        "per write",
        f"{node.deliveries_per_write:.2f} deliveries",
    )
    grid.add_row(
        "drops",
        Text(fmt_drops(node, short=True), style="yellow" if node.drops_total else ""),
        "slow disconnects",
        Text(f"{node.slow_disconnects:,}", style="red" if node.slow_disconnects else ""),
    )
    return grid


def render(snapshot: Snapshot, banner: Banner, width: int, height: int) -> RenderableType:
    """The live panel for a terminal of ``width`` x ``height`` characters."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    head.add_row("websocket", banner.ws_url)
    head.add_row("metrics", banner.metrics_url)
    max_rows = max(1, height - FIXED_LINES)
    body = Group(
        head,
        Text(""),
        Text.assemble(
            ("simulated clients", "bold magenta"),
            ("  rates and publish-to-receive latency over the last 5 s", "dim"),
        ),
        _session_table(snapshot, max_rows, narrow=width < NARROW),
        Text(""),
        Text.assemble(
            ("node hub", "bold magenta"),
            ("  read in-process from node.hub", "dim"),
        ),
        _node_grid(snapshot.node),
    )
    phase_style = {"running": "green", "stopped": "bold"}.get(snapshot.phase, "yellow")
    title = Text.assemble(
        ("agentcast demo", "bold"),
        f"  node {banner.node_id}  ",
        (snapshot.phase, phase_style),
        f"  {snapshot.elapsed:.1f} s",
    )
    return Panel(
        body,
        title=title,
        title_align="left",
        subtitle=Text(SUBTITLES.get(snapshot.phase, "stopping ..."), style="dim"),
        subtitle_align="right",
        border_style="blue",
    )


class View(Protocol):
    """Something that shows snapshots; :meth:`close` restores the terminal."""

    def update(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


class LiveView:
    """A ``rich.live.Live`` panel redrawn on every :meth:`update` (no refresh thread)."""

    def __init__(self, banner: Banner, console: Console | None = None) -> None:
        self.banner = banner
        self.console = console or Console()
        self._live = Live(
            Text("connecting ...", style="dim"),
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        self._live.start(refresh=True)

    def update(self, snapshot: Snapshot) -> None:
        self._live.update(render(snapshot, self.banner, *self.console.size), refresh=True)

    def close(self) -> None:
        self._live.stop()


class PlainView:
    """One :func:`plain_line` per :meth:`update`, flushed at once."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def update(self, snapshot: Snapshot) -> None:
        print(plain_line(snapshot), file=self.out, flush=True)

    def close(self) -> None:
        pass
