// @ts-check
// The agentcast dashboard: polls /v1/stats for the numbers and uses the JS client
// (/clients/agentcast.js) to watch a session's messages live and to replay durable history.
//
// Query parameters: `ws` (the node's WebSocket URL; default: the snapshot's ws_url, else this
// host on the HTTP port minus one, the default layout), `token` (sent in hello) and `key` (an
// admin API key for /v1/stats when the node requires authentication).
import { Client } from "../../clients/agentcast.js";
import { fill, h } from "./format.js";
import { renderHeader, renderOverview } from "./overview.js";
import { SessionView } from "./session.js";

const POLL_MS = 1000;
const CLIENT_NAME = "agentcast-dashboard";

const params = new URLSearchParams(location.search);

/** @type {any} */
let latest = null;
/** @type {Client | null} */
let client = null;
/** @type {Promise<Client> | null} */
let connecting = null;
/** @type {() => void} */
let markPolled = () => {};
/** Settles after the first /v1/stats attempt (its ws_url may name the WebSocket). */
const firstPoll = new Promise((resolve) => {
  markPolled = () => resolve(undefined);
});

/**
 * @param {string} id
 * @param {"ok" | "warn" | "bad" | ""} tone
 * @param {string} [title]
 */
function status(id, tone, title) {
  const node = document.getElementById(id);
  if (!node) return;
  node.className = `status ${tone}`;
  if (title) node.title = title;
}

/** The node's WebSocket URL (see the module comment). */
function wsUrl() {
  const given = params.get("ws");
  if (given) return given;
  if (latest && latest.ws_url) return String(latest.ws_url);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const port = Number(location.port || (location.protocol === "https:" ? 443 : 80)) - 1;
  return `${scheme}//${location.hostname}:${port}/v1/ws`;
}

/** @param {string} url */
function clientOptions(url) {
  return {
    name: CLIENT_NAME,
    getToken: () => params.get("token"),
    backoffMax: 5,
    maxReconnectAttempts: 1000000,
    logger: { warn: console.warn.bind(console) },
  };
}

/** The page's shared client, connected on first use. */
async function liveClient() {
  if (client) return client;
  if (connecting) return connecting;
  await firstPoll;
  if (client) return client;
  if (connecting) return connecting;
  const url = wsUrl();
  const fresh = new Client(url, clientOptions(url));
  fresh.on("state", (state) => {
    const tone = state === "connected" ? "ok" : state === "reconnecting" || state === "connecting" ? "warn" : "bad";
    status("ws-status", tone, `${url}: ${state}`);
  });
  const opening = fresh
    .connect()
    .then(() => {
      client = fresh;
      return fresh;
    })
    .finally(() => {
      connecting = null;
    });
  connecting = opening;
  opening.catch((error) => status("ws-status", "bad", `${url}: ${error.message ?? error}`));
  return opening;
}

/** A fresh connected client (for a replay). */
async function newClient() {
  await firstPoll;
  const url = wsUrl();
  const fresh = new Client(url, clientOptions(url));
  await fresh.connect();
  return fresh;
}

const session = new SessionView(liveClient, newClient);

function route() {
  const match = /^#\/session\/(.+)$/.exec(location.hash);
  const overview = document.getElementById("overview");
  const sessionMain = document.getElementById("session");
  const crumbs = document.getElementById("crumbs");
  if (!overview || !sessionMain || !crumbs) return;
  if (match) {
    const id = decodeURIComponent(match[1]);
    overview.hidden = true;
    sessionMain.hidden = false;
    fill(crumbs, [h("a", { href: "#/", text: "Overview" }), " / ", h("b", { text: id })]);
    document.title = `${id} · agentcast`;
    session.open(id).catch((error) => status("ws-status", "bad", String(error.message ?? error)));
  } else {
    overview.hidden = false;
    sessionMain.hidden = true;
    fill(crumbs, [h("b", { text: "Overview" })]);
    document.title = "agentcast dashboard";
    session.close().catch(() => {});
    if (latest) renderOverview(latest);
  }
}

async function poll() {
  try {
    const key = params.get("key");
    const headers = key ? { Authorization: `Bearer ${key}` } : undefined;
    const response = await fetch("v1/stats", { cache: "no-store", headers });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    latest = await response.json();
    status("stats-status", "ok", "/v1/stats: ok");
    renderHeader(latest);
    if (!document.getElementById("overview")?.hidden) renderOverview(latest);
    session.update(latest);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (error) {
    status("stats-status", "bad", `/v1/stats: ${error instanceof Error ? error.message : error}`);
  } finally {
    markPolled();
    setTimeout(poll, POLL_MS);
  }
}

window.addEventListener("hashchange", route);
route();
poll();
