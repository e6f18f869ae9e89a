// @ts-check
// The overview: summary cards, throughput chart, latency and queue histograms, sessions,
// topics and connections, all drawn from one /v1/stats snapshot at a time.
import { count, duration, fill, h, latency, rate, s } from "./format.js";

const HISTORY = 120;
const MAX_TABLE_ROWS = 40;
const MAX_CHIPS = 14;

/** Rates seen at each poll, for the throughput chart. */
const history = /** @type {Array<{publishes: number, deliveries: number}>} */ ([]);

/**
 * @param {string} id
 * @returns {HTMLElement}
 */
function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing #${id}`);
  return node;
}

/**
 * @param {string} label
 * @param {string} value
 * @param {string} [sub]
 * @param {string} [tone]
 * @param {string} [unit]
 */
function card(label, value, sub = "", tone = "", unit = "") {
  return h("div", { class: `card ${tone}`, "data-card": label }, [
    h("div", { class: "label", text: label }),
    h("div", { class: "value" }, [value, unit ? h("small", { text: unit }) : null]),
    h("div", { class: "sub", text: sub }),
  ]);
}

/** @param {any} stats */
function renderCards(stats) {
  const t = stats.totals;
  const r = stats.rates;
  const dropsTone = t.drops_total > 0 ? "amber" : "";
  fill(byId("cards"), [
    card("Connections", count(t.connections), `${count(t.connections_opened)} opened since start`),
    card("Subscriptions", count(t.subscriptions), `${count(stats.session_count)} sessions, ${count(stats.topic_count)} topics`),
    card("Publishes", rate(r.publishes), `${count(t.publishes)} total`, "accent", "/s"),
    card("Deliveries", rate(r.deliveries), `${count(t.deliveries)} total, ${rate(r.writes)} writes/s`, "green", "/s"),
    card("Drops", count(t.drops_total), `${rate(r.drops)}/s now, ${count(t.slow_disconnects)} slow disconnects`, dropsTone),
    card("Queued", count(stats.queues.queued), `max ${count(stats.queues.max)} on one connection`),
    card("Latency p50", latency(stats.latency.p50), `p99 ${latency(stats.latency.p99)} (recent)`),
  ]);
}

/**
 * The throughput chart: publishes/s and deliveries/s over the last polls.
 * @param {any} stats
 */
function renderThroughput(stats) {
  history.push({ publishes: stats.rates.publishes, deliveries: stats.rates.deliveries });
  if (history.length > HISTORY) history.shift();
  const width = 600;
  const height = 170;
  const left = 44;
  const bottom = 18;
  const top = 8;
  const peak = Math.max(1, ...history.map((p) => Math.max(p.publishes, p.deliveries)));
  const scale = niceCeiling(peak);
  const x = (/** @type {number} */ i) => left + (i / (HISTORY - 1)) * (width - left - 4);
  const y = (/** @type {number} */ v) => top + (1 - v / scale) * (height - top - bottom);
  const offset = HISTORY - history.length;
  /** @type {SVGElement[]} */
  const parts = [];
  for (let k = 0; k <= 4; k++) {
    const value = (scale * k) / 4;
    parts.push(s("line", { class: "grid", x1: left, x2: width - 4, y1: y(value), y2: y(value) }));
    parts.push(s("text", { class: "axis", x: left - 6, y: y(value) + 3, "text-anchor": "end", text: rate(value) }));
  }
  for (const key of /** @type {const} */ (["deliveries", "publishes"])) {
    if (history.length < 2) continue;
    const points = history.map((p, i) => `${x(i + offset).toFixed(1)},${y(p[key]).toFixed(1)}`);
    const area = `M${x(offset).toFixed(1)},${y(0)} L${points.join(" L")} L${x(HISTORY - 1).toFixed(1)},${y(0)} Z`;
    parts.push(s("path", { class: `area-${key}`, d: area }));
    parts.push(s("polyline", { class: `line-${key}`, points: points.join(" ") }));
  }
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" }, parts);
  fill(byId("throughput"), [svg]);
}

/**
 * A round number at or above `value` (1, 2, 5 times a power of ten).
 * @param {number} value
 */
function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

/**
 * Bars of a histogram; `labels[i]` names bucket i.
 * @param {HTMLElement} node
 * @param {number[]} counts
 * @param {string[]} labels
 */
function renderBars(node, counts, labels) {
  const peak = Math.max(1, ...counts);
  fill(
    node,
    counts.map((value, i) =>
      h("div", { class: "bar", title: `${labels[i]}: ${count(value)}` }, [
        h("div", { class: "count", text: value ? count(value) : "" }),
        h("div", { class: `fill${value ? "" : " empty"}`, style: `height:${Math.max(1, (value / peak) * 82)}%` }),
        h("div", { class: "tick", text: labels[i] }),
      ]),
    ),
  );
}

/** @param {any} stats */
function renderLatency(stats) {
  const bounds = /** @type {number[]} */ (stats.latency.bounds);
  const labels = [...bounds.map((b) => `≤${latency(b)}`), `>${latency(bounds[bounds.length - 1])}`];
  const recent = /** @type {number[]} */ (stats.latency.recent);
  const total = recent.reduce((a, b) => a + b, 0);
  // Leave out empty buckets past the last filled one, keeping at least eight.
  let last = recent.length - 1;
  while (last > 7 && recent[last] === 0) last -= 1;
  renderBars(byId("latency"), recent.slice(0, last + 1), labels.slice(0, last + 1));
  byId("latency-hint").textContent = `${count(total)} flushes in the last ${Math.round(stats.rates.window)}s · p50 ${latency(stats.latency.p50)} · p99 ${latency(stats.latency.p99)}`;
}

/** @param {any} stats */
function renderQueues(stats) {
  const bounds = /** @type {number[]} */ (stats.queues.bounds);
  const labels = [...bounds.map((b) => `≤${b}`), `>${bounds[bounds.length - 1]}`];
  const counts = /** @type {number[]} */ (stats.queues.counts);
  let last = counts.length - 1;
  while (last > 5 && counts[last] === 0) last -= 1;
  renderBars(byId("queues"), counts.slice(0, last + 1), labels.slice(0, last + 1));
  const drops = Object.entries(stats.totals.drops);
  fill(byId("drops"), [
    h("span", { class: `pill${stats.totals.drops_total ? " bad" : ""}` }, ["drops ", h("b", { text: count(stats.totals.drops_total) })]),
    ...drops.map(([policy, value]) => h("span", { class: "pill" }, [`${policy} `, h("b", { text: count(Number(value)) })])),
    h("span", { class: "pill" }, ["slow disconnects ", h("b", { text: count(stats.totals.slow_disconnects) })]),
    h("span", { class: "pill" }, ["errors ", h("b", { text: count(stats.totals.errors) })]),
    h("span", { class: "pill" }, ["duplicates ", h("b", { text: count(stats.totals.duplicates) })]),
  ]);
  const groups = /** @type {any[]} */ (stats.groups);
  fill(byId("groups"), groups.length ? [
    h("h2", { text: "Consumer groups", style: "margin:14px 0 6px" }),
    h("table", { class: "table" }, [
      h("tr", {}, [h("th", { text: "group" }), h("th", { text: "topic" }), h("th", { class: "num", text: "members" }), h("th", { class: "num", text: "in flight" }), h("th", { class: "num", text: "pending" }), h("th", { class: "num", text: "floor" })]),
      ...groups.map((g) => h("tr", {}, [
        h("td", { text: g.group }),
        h("td", { class: "mono", text: g.topic }),
        h("td", { class: "num", text: count(g.members) }),
        h("td", { class: "num", text: count(g.in_flight) }),
        h("td", { class: "num", text: count(g.pending) }),
        h("td", { class: "num", text: count(g.floor) }),
      ])),
    ]),
  ] : []);
}

/**
 * @param {any[]} agents
 * @param {number} [limit]
 */
export function agentChips(agents, limit = MAX_CHIPS) {
  const shown = agents.slice(0, limit);
  return [
    ...shown.map((agent) =>
      h("span", { class: `chip${agent.observer ? " observer" : ""}`, title: `${agent.client ?? agent.connection} · ${agent.topics.join(", ")}`, "data-agent": agent.name, text: agent.name }),
    ),
    agents.length > limit ? h("span", { class: "chip more", text: `+${agents.length - limit} more` }) : null,
  ];
}

/** @param {any} stats */
function renderSessions(stats) {
  const sessions = /** @type {any[]} */ (stats.sessions);
  byId("sessions-hint").textContent = `${count(stats.session_count)} sessions (tenant.session prefixes of topics in use)`;
  if (!sessions.length) {
    fill(byId("sessions"), [h("div", { class: "empty", text: "No sessions yet: subscribe or publish to <tenant>.<session>.<topic>." })]);
    return;
  }
  fill(
    byId("sessions"),
    sessions.map((session) =>
      h("a", { class: "session-card", href: `#/session/${encodeURIComponent(session.id)}`, "data-session": session.id }, [
        h("div", { class: "top" }, [
          h("span", { class: "name", text: session.name }),
          h("span", { class: "tenant", text: session.tenant }),
          h("span", { class: "rate", text: `${rate(session.publish_rate)}/s` }),
        ]),
        h("div", {
          class: "meta",
          text: `${count(session.agent_count)} agents · ${count(session.observer_count)} observers · ${count(session.topic_count)} topics · ${count(session.publishes)} messages`,
        }),
        h("div", { class: "chips" }, agentChips(session.agents)),
      ]),
    ),
  );
}

/** @param {any} stats */
function renderTopics(stats) {
  const topics = /** @type {any[]} */ (stats.topics).slice(0, MAX_TABLE_ROWS);
  const peak = Math.max(0.0001, ...topics.map((t) => t.rate));
  byId("topics-hint").textContent = `${count(stats.topic_count)} topics published to, busiest first`;
  fill(byId("topics"), [
    h("tr", {}, [h("th", { text: "topic" }), h("th", { text: "publishes/s" }), h("th", { class: "num", text: "total" })]),
    ...topics.map((topic) =>
      h("tr", { "data-topic": topic.topic }, [
        h("td", { class: "mono" }, [topic.topic, topic.durable ? h("span", { class: "badge", text: "durable" }) : null]),
        h("td", { class: "rate-cell" }, [
          h("div", { class: "ratebar" }, [
            h("div", { class: "track" }, [h("div", { class: "fill", style: `width:${(topic.rate / peak) * 100}%` })]),
            h("span", { class: "num", text: rate(topic.rate) }),
          ]),
        ]),
        h("td", { class: "num", text: count(topic.total) }),
      ]),
    ),
  ]);
}

/** @param {any} stats */
function renderConnections(stats) {
  const rows = /** @type {any[]} */ (stats.connections.shown).slice(0, MAX_TABLE_ROWS);
  byId("connections-hint").textContent = `${count(stats.connections.total)} open${stats.connections.total > rows.length ? `, first ${rows.length} shown` : ""}`;
  fill(byId("connections"), [
    h("tr", {}, [h("th", { text: "connection" }), h("th", { text: "client" }), h("th", { text: "subscriptions" }), h("th", { class: "num", text: "groups" }), h("th", { class: "num", text: "queued" })]),
    ...rows.map((c) =>
      h("tr", {}, [
        h("td", { class: "mono", text: c.id }),
        h("td", { text: c.client ?? "-" }),
        h("td", { class: "subs", text: c.subscriptions.join("  ") + (c.subscription_count > c.subscriptions.length ? ` +${c.subscription_count - c.subscriptions.length}` : "") }),
        h("td", { class: "num", text: count(c.groups) }),
        h("td", { class: "num", text: count(c.queued) }),
      ]),
    ),
  ]);
}

/**
 * Draw the overview from one snapshot.
 * @param {any} stats
 */
export function renderOverview(stats) {
  renderCards(stats);
  renderThroughput(stats);
  renderLatency(stats);
  renderQueues(stats);
  renderSessions(stats);
  renderTopics(stats);
  renderConnections(stats);
}

/**
 * The header's node id and uptime.
 * @param {any} stats
 */
export function renderHeader(stats) {
  byId("node-id").textContent = stats.node;
  byId("uptime").textContent = duration(stats.uptime);
}
