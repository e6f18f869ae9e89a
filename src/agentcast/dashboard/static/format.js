// @ts-check
// Small DOM and formatting helpers of the dashboard (no dependencies).

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * An HTML element with attributes and children (strings become text nodes).
 * @param {string} tag
 * @param {Record<string, string | number | boolean | null | undefined>} [attrs]
 * @param {Array<Node | string | null | undefined | false>} [children]
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/**
 * An SVG element with attributes.
 * @param {string} tag
 * @param {Record<string, string | number | null | undefined>} [attrs]
 * @param {Array<Node | null | undefined>} [children]
 * @returns {SVGElement}
 */
export function s(tag, attrs = {}, children = []) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/**
 * Replace the children of `node`.
 * @param {Element} node
 * @param {Array<Node | string | null | undefined | false>} children
 */
export function fill(node, children) {
  /** @type {Node[]} */
  const nodes = [];
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    nodes.push(typeof child === "string" ? document.createTextNode(child) : child);
  }
  node.replaceChildren(...nodes);
}

/**
 * A count with thousands separators.
 * @param {number} value
 */
export function count(value) {
  return Math.round(value).toLocaleString("en-US");
}

/**
 * A rate: one decimal below 100, none above.
 * @param {number} value
 */
export function rate(value) {
  if (!Number.isFinite(value)) return "-";
  if (value < 100) return value.toFixed(1);
  return Math.round(value).toLocaleString("en-US");
}

/**
 * Seconds as a compact duration (`42s`, `3m 05s`, `2h 14m`, `3d 4h`).
 * @param {number} seconds
 */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const hours = Math.floor(m / 60);
  if (hours < 24) return `${hours}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

/**
 * Seconds as a latency label (`0.1ms`, `25ms`, `1.0s`).
 * @param {number | null | undefined} seconds
 */
export function latency(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "-";
  if (seconds < 0.001) return `${+(seconds * 1000).toFixed(2)}ms`;
  if (seconds < 1) return `${+(seconds * 1000).toFixed(1)}ms`;
  return `${seconds.toFixed(1)}s`;
}

/**
 * An RFC 3339 time as HH:MM:SS.mmm (local time).
 * @param {string} value
 */
export function clock(value) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return "";
  const pad = (/** @type {number} */ n, width = 2) => String(n).padStart(width, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/**
 * Text of a payload for a one-line label.
 * @param {unknown} payload
 * @param {number} [max]
 */
export function summary(payload, max = 60) {
  let text;
  if (typeof payload === "string") text = payload;
  else if (payload && typeof payload === "object") {
    const record = /** @type {Record<string, unknown>} */ (payload);
    text = typeof record.text === "string" ? record.text : typeof record.kind === "string" ? record.kind : JSON.stringify(payload);
  } else text = JSON.stringify(payload);
  text = String(text ?? "");
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/**
 * Natural order: `session-2` before `session-10`.
 * @param {string} a
 * @param {string} b
 */
export function naturalCompare(a, b) {
  return a.localeCompare(b, "en", { numeric: true });
}
