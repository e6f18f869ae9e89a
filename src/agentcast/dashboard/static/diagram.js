// @ts-check
// A sequence diagram of a session's messages: one lane per agent (and per shared topic such
// as a chat), one row per event with an arrow from its sender to where it went, and a dashed
// link from an event to each shown event it caused (causation_id).
import { fill, s, summary } from "./format.js";

const GUTTER = 54;
const HEAD = 40;
const ROW = 26;
const MIN_LANE = 58;
const MAX_LANE = 180;
const MAX_LANES = 80;

/**
 * @typedef {{id: string, topic: string, seq: number, source: string, causation_id: string | null, payload: unknown, time: string}} Envelope
 * @typedef {{sender: string, target: string, kind: "agent" | "topic", channel: string}} Route
 */

/**
 * Who sent `event` and where it went, as lane names of `sessionId`'s diagram.
 * @param {Envelope} event
 * @param {string} sessionId `tenant.session`
 * @param {Set<string>} agents known agent names
 * @returns {Route}
 */
export function describe(event, sessionId, agents) {
  const short = sessionId.split(".").slice(1).join(".");
  let sender = event.source || "?";
  if (sender.startsWith("ac://client/")) sender = sender.slice("ac://client/".length);
  else if (sender.startsWith("ac://http/")) sender = `http:${sender.slice("ac://http/".length)}`;
  for (const prefix of [`${sessionId}.`, `${short}.`]) {
    if (sender.startsWith(prefix) && sender.length > prefix.length) {
      sender = sender.slice(prefix.length);
      break;
    }
  }
  const channel = event.topic.startsWith(`${sessionId}.`) ? event.topic.slice(sessionId.length + 1) : event.topic;
  const segments = channel.split(".");
  let agent = segments.find((segment) => agents.has(segment));
  if (!agent && segments[0] === "agent" && segments.length > 1) agent = segments[1];
  if (agent) return { sender, target: agent, kind: "agent", channel };
  return { sender, target: channel, kind: "topic", channel };
}

/** Draws into one <svg>; keeps the lanes it has seen so they do not jump around. */
export class SequenceDiagram {
  /**
   * @param {SVGSVGElement} svg
   * @param {{rows?: number, onSelect?: (event: Envelope) => void}} [options]
   */
  constructor(svg, options = {}) {
    this.svg = svg;
    this.rows = options.rows ?? 32;
    this.onSelect = options.onSelect ?? null;
    this.sessionId = "";
    /** @type {Set<string>} agents connected now */
    this.online = new Set();
    /** @type {string[]} agent lanes, in order */
    this.agentLanes = [];
    /** @type {string[]} topic lanes, in order */
    this.topicLanes = [];
    /** @type {string | null} the event under the pointer */
    this.hovered = null;
  }

  /**
   * Start over for another session.
   * @param {string} sessionId
   */
  reset(sessionId) {
    this.sessionId = sessionId;
    this.online = new Set();
    this.agentLanes = [];
    this.topicLanes = [];
  }

  /**
   * The agents connected now (they get a lane even before they speak).
   * @param {string[]} names
   */
  setAgents(names) {
    this.online = new Set(names);
    for (const name of names) this.addLane(name, "agent");
  }

  /**
   * @param {string} name
   * @param {"agent" | "topic"} kind
   */
  addLane(name, kind) {
    const lanes = kind === "agent" ? this.agentLanes : this.topicLanes;
    if (lanes.includes(name) || this.agentLanes.length + this.topicLanes.length >= MAX_LANES) return;
    lanes.push(name);
    lanes.sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  }

  /**
   * Draw the last `rows` of `events` (oldest first); `current` is highlighted with the
   * chain of events that caused it, and the events in `future` are dimmed.
   * @param {Envelope[]} events
   * @param {{current?: Envelope | null, fresh?: Set<string>, future?: Set<string>}} [options]
   */
  render(events, options = {}) {
    const shown = events.slice(-this.rows);
    const known = new Set([...this.agentLanes, ...this.online]);
    const routes = shown.map((event) => describe(event, this.sessionId, known));
    for (const route of routes) {
      this.addLane(route.sender, "agent");
      this.addLane(route.target, route.kind);
    }
    const lanes = [...this.agentLanes, ...this.topicLanes];
    const available = (this.svg.parentElement?.clientWidth ?? 900) - GUTTER - 16;
    const laneWidth = Math.max(MIN_LANE, Math.min(MAX_LANE, available / Math.max(1, lanes.length)));
    const width = GUTTER + laneWidth * lanes.length + 16;
    const height = HEAD + 12 + ROW * Math.max(shown.length, 6);
    const laneX = new Map(lanes.map((name, i) => [name, GUTTER + laneWidth * (i + 0.5)]));
    const rowY = (/** @type {number} */ i) => HEAD + 22 + i * ROW;
    const maxChars = Math.max(4, Math.floor((laneWidth - 8) / 6.4));

    const prefix = this.svg.id || "diagram";
    /** @type {SVGElement[]} */
    const parts = [defs(prefix)];
    lanes.forEach((name) => {
      const x = /** @type {number} */ (laneX.get(name));
      parts.push(s("line", { class: "lane-line", x1: x, x2: x, y1: HEAD, y2: height - 4 }));
    });
    lanes.forEach((name) => {
      const x = /** @type {number} */ (laneX.get(name));
      const isTopic = this.topicLanes.includes(name);
      const offline = !isTopic && !this.online.has(name);
      const label = name.length > maxChars ? `${name.slice(0, maxChars - 1)}…` : name;
      parts.push(
        s("g", { class: `lane-head${isTopic ? " topic" : ""}${offline ? " offline" : ""}`, "data-lane": name }, [
          s("rect", { x: x - laneWidth / 2 + 4, y: 6, width: laneWidth - 8, height: 24, rx: 6 }),
          s("text", { x, y: 22, "text-anchor": "middle", text: label }, [s("title", { text: name })]),
        ]),
      );
    });

    const index = new Map(shown.map((event, i) => [event.id, i]));
    const chain = new Set();
    const current = options.current ?? null;
    if (current) {
      /** @type {Envelope | undefined} */
      let cursor = current;
      for (let hops = 0; cursor && hops < 64; hops++) {
        chain.add(cursor.id);
        /** @type {number | undefined} */
        const causeAt = cursor.causation_id ? index.get(cursor.causation_id) : undefined;
        cursor = causeAt === undefined ? undefined : shown[causeAt];
      }
    }
    // Causation links under the arrows: from where the cause landed to where the effect starts.
    shown.forEach((event, i) => {
      const causeIndex = event.causation_id ? index.get(event.causation_id) : undefined;
      if (causeIndex === undefined) return;
      const from = /** @type {number} */ (laneX.get(routes[causeIndex].target));
      const to = /** @type {number} */ (laneX.get(routes[i].sender));
      const y1 = rowY(causeIndex);
      const y2 = rowY(i);
      const bulge = Math.min(60, 14 + (y2 - y1) / 4);
      const hot = chain.has(event.id) && chain.has(shown[causeIndex].id);
      const later = options.future?.has(event.id) ?? false;
      parts.push(
        s("path", {
          class: `cause${hot ? " hot" : ""}${later ? " future" : ""}`,
          d: `M${from},${y1} C${from + bulge},${y1 + 6} ${to + bulge},${y2 - 6} ${to},${y2}`,
          "data-from": shown[causeIndex].id,
          "data-to": event.id,
        }),
      );
    });
    shown.forEach((event, i) => {
      const route = routes[i];
      const y = rowY(i);
      const x1 = /** @type {number} */ (laneX.get(route.sender));
      const x2 = /** @type {number} */ (laneX.get(route.target));
      const kind = route.kind === "topic" ? "topic" : event.causation_id ? "reply" : "direct";
      const classes = ["msg", kind];
      if (options.fresh?.has(event.id)) classes.push("fresh");
      if (current && event.id === current.id) classes.push("current");
      if (options.future?.has(event.id)) classes.push("future");
      const same = Math.abs(x2 - x1) < 1;
      const end = same ? x1 : x2 + (x2 > x1 ? -5 : 5);
      const span = Math.max(laneWidth, Math.abs(x2 - x1));
      const chars = Math.max(6, Math.floor(span / 6.2));
      const label = `${summary(event.payload, chars)}`;
      const labelX = same ? x1 + 12 : (x1 + x2) / 2;
      const anchor = same ? "start" : "middle";
      const marker = `url(#${prefix}-arrow-${kind})`;
      const children = [
        s("rect", { class: "row-bg", x: 0, y: y - ROW / 2, width, height: ROW }),
        s("text", { class: "seq", x: 8, y: y + 3, text: `#${event.seq}` }),
        same
          ? s("path", { d: `M${x1},${y - 4} C${x1 + 22},${y - 10} ${x1 + 22},${y + 8} ${x1 + 4},${y + 5}`, fill: "none", class: "loop", stroke: "currentColor", "marker-end": marker })
          : s("line", { x1, y1: y, x2: end, y2: y, "marker-end": marker }),
        s("circle", { cx: x1, cy: y, r: 3.2 }),
        s("text", { x: labelX, y: y - 5, "text-anchor": anchor, text: label }),
        s("title", { text: `${route.sender} → ${event.topic} (#${event.seq})\n${summary(event.payload, 400)}` }),
      ];
      const group = s("g", { class: classes.join(" "), "data-id": event.id, "data-seq": event.seq, "data-from": route.sender, "data-to": route.target }, children);
      group.addEventListener("mouseenter", () => this.highlight(event.id, true));
      group.addEventListener("mouseleave", () => this.highlight(event.id, false));
      if (this.onSelect) {
        const select = this.onSelect;
        group.addEventListener("click", () => select(event));
        group.setAttribute("style", "cursor:pointer");
      }
      parts.push(group);
    });
    this.svg.setAttribute("width", String(width));
    this.svg.setAttribute("height", String(height));
    this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    fill(this.svg, parts);
    if (this.hovered) this.highlight(this.hovered, true);
  }

  /**
   * Emphasise the causation links into and out of event `id`.
   * @param {string} id
   * @param {boolean} on
   */
  highlight(id, on) {
    this.hovered = on ? id : this.hovered === id ? null : this.hovered;
    for (const path of this.svg.querySelectorAll(".cause")) {
      const element = /** @type {SVGElement} */ (path);
      if (element.dataset.from === id || element.dataset.to === id) element.classList.toggle("hover", on);
    }
  }
}

/**
 * Arrow heads, one per message kind (ids prefixed: each diagram has its own).
 * @param {string} prefix
 */
function defs(prefix) {
  const colors = { direct: "#5b9cff", topic: "#f2b84b", reply: "#3ccf8e" };
  return s(
    "defs",
    {},
    Object.entries(colors).map(([kind, color]) =>
      s("marker", { id: `${prefix}-arrow-${kind}`, viewBox: "0 0 10 10", refX: 8, refY: 5, markerWidth: 10, markerHeight: 10, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" }, [
        s("path", { d: "M0,0 L10,5 L0,10 z", fill: color }),
      ]),
    ),
  );
}
