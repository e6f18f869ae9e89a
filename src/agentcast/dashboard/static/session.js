// @ts-check
// The session view: who is connected, the messages between agents as they happen (through
// the JS client), and a replay of a durable topic's history that steps back and forth.
import { SequenceDiagram, describe } from "./diagram.js";
import { clock, count, fill, h, rate, summary } from "./format.js";
import { agentChips } from "./overview.js";

const LIVE_KEEP = 400;
const LOG_KEEP = 80;
const PLAY_EVERY_MS = 450;

/**
 * @param {string} id
 * @returns {any}
 */
function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`missing #${id}`);
  return node;
}

/**
 * @typedef {import("./diagram.js").Envelope} Envelope
 * @typedef {{subscribe: (pattern: string, options?: any) => Promise<any>, close: () => Promise<void>}} ClientLike
 */

export class SessionView {
  /**
   * @param {() => Promise<ClientLike>} liveClient the page's shared client (connected)
   * @param {() => Promise<ClientLike>} newClient a fresh connected client (for a replay)
   */
  constructor(liveClient, newClient) {
    this.liveClient = liveClient;
    this.newClient = newClient;
    this.sessionId = "";
    /** @type {any} */
    this.liveSub = null;
    /** @type {Envelope[]} */
    this.events = [];
    /** @type {Set<string>} */
    this.fresh = new Set();
    this.received = 0;
    this.paused = false;
    this.dirty = false;
    this.mode = "live";
    this.live = new SequenceDiagram(byId("live-diagram"), { rows: 30 });
    this.replay = new SequenceDiagram(byId("replay-diagram"), {
      rows: 30,
      onSelect: (event) => this.jumpTo(event),
    });
    /** @type {any} */
    this.replayClient = null;
    /** @type {any} */
    this.replaySub = null;
    /** @type {Envelope[]} */
    this.replayEvents = [];
    this.cursor = -1;
    /** @type {ReturnType<typeof setInterval> | null} */
    this.player = null;
    /** @type {any} */
    this.lastStats = null;
    this.bind();
  }

  bind() {
    byId("live-pause").addEventListener("click", () => {
      this.paused = !this.paused;
      byId("live-pause").textContent = this.paused ? "Resume" : "Pause";
      this.schedule();
    });
    byId("tab-live").addEventListener("click", () => this.setMode("live"));
    byId("tab-replay").addEventListener("click", () => this.setMode("replay"));
    byId("replay-form").addEventListener("submit", (/** @type {Event} */ event) => {
      event.preventDefault();
      this.loadReplay().catch((error) => this.replayStatus(`failed: ${error.message ?? error}`));
    });
    byId("replay-first").addEventListener("click", () => this.step(-Infinity));
    byId("replay-back").addEventListener("click", () => this.step(-1));
    byId("replay-forward").addEventListener("click", () => this.step(1));
    byId("replay-last-step").addEventListener("click", () => this.step(Infinity));
    byId("replay-play").addEventListener("click", () => this.togglePlay());
    byId("replay-slider").addEventListener("input", () => this.moveTo(Number(byId("replay-slider").value)));
  }

  /** @param {"live" | "replay"} mode */
  setMode(mode) {
    this.mode = mode;
    byId("tab-live").classList.toggle("active", mode === "live");
    byId("tab-replay").classList.toggle("active", mode === "replay");
    byId("live-panel").hidden = mode !== "live";
    byId("replay-panel").hidden = mode !== "replay";
    this.schedule();
    if (mode === "replay") this.renderReplay();
  }

  /**
   * Show `sessionId`: subscribe to everything under it.
   * @param {string} sessionId
   */
  async open(sessionId) {
    if (this.sessionId === sessionId && this.liveSub) return;
    await this.close();
    this.sessionId = sessionId;
    this.events = [];
    this.fresh = new Set();
    this.received = 0;
    this.live.reset(sessionId);
    this.replay.reset(sessionId);
    byId("session-title").textContent = sessionId;
    fill(byId("live-log"), []);
    this.setMode("live");
    if (this.lastStats) this.update(this.lastStats);
    this.schedule();
    const client = await this.liveClient();
    if (this.sessionId !== sessionId) return;
    this.liveSub = await client.subscribe(`${sessionId}.>`, {
      policy: "drop_oldest",
      onEvent: (/** @type {Envelope} */ event) => this.onLive(event),
    });
    if (this.sessionId !== sessionId) await this.liveSub.unsubscribe().catch(() => {});
  }

  /** Leave the session view: drop its subscriptions. */
  async close() {
    this.stopPlay();
    this.sessionId = "";
    const sub = this.liveSub;
    this.liveSub = null;
    if (sub) await sub.unsubscribe().catch(() => {});
    await this.closeReplay();
  }

  async closeReplay() {
    const client = this.replayClient;
    this.replayClient = null;
    this.replaySub = null;
    if (client) await client.close().catch(() => {});
  }

  /** @param {Envelope} event */
  onLive(event) {
    this.received += 1;
    this.events.push(event);
    if (this.events.length > LIVE_KEEP) this.events.splice(0, this.events.length - LIVE_KEEP);
    this.fresh.add(event.id);
    if (!this.paused) this.appendLog(event);
    this.schedule();
  }

  /** @param {Envelope} event */
  appendLog(event) {
    const known = new Set([...this.live.agentLanes, ...this.live.online]);
    const route = describe(event, this.sessionId, known);
    const cause = event.causation_id ? this.events.find((e) => e.id === event.causation_id) : undefined;
    const item = h("li", { "data-id": event.id }, [
      h("div", { class: "head" }, [
        h("span", { class: "who", text: route.sender }),
        h("span", { class: "arrow", text: "→" }),
        h("span", { class: `to${route.kind === "agent" ? " agent" : ""}`, text: route.kind === "agent" ? `${route.target} (${route.channel.split(".").pop()})` : route.target }),
        h("span", { class: "time", text: clock(event.time) }),
      ]),
      h("div", { class: "text", text: summary(event.payload, 140) }),
      cause ? h("div", { class: "because", text: `↳ in reply to ${describe(cause, this.sessionId, known).sender}: ${summary(cause.payload, 60)}` }) : null,
    ]);
    const log = byId("live-log");
    log.prepend(item);
    while (log.children.length > LOG_KEEP) log.lastElementChild?.remove();
  }

  schedule() {
    if (this.dirty) return;
    this.dirty = true;
    requestAnimationFrame(() => {
      this.dirty = false;
      if (this.mode === "live" && !this.paused && this.sessionId) {
        this.live.render(this.events, { fresh: this.fresh });
        this.fresh = new Set();
        byId("live-hint").textContent = `${count(this.received)} received · last ${Math.min(this.events.length, this.live.rows)} shown`;
      }
    });
  }

  /**
   * New numbers from /v1/stats.
   * @param {any} stats
   */
  update(stats) {
    this.lastStats = stats;
    if (!this.sessionId) return;
    const session = (stats.sessions ?? []).find((/** @type {any} */ s) => s.id === this.sessionId);
    const agents = session ? session.agents : [];
    this.live.setAgents(agents.filter((/** @type {any} */ a) => !a.observer).map((/** @type {any} */ a) => a.name));
    this.replay.setAgents(agents.filter((/** @type {any} */ a) => !a.observer).map((/** @type {any} */ a) => a.name));
    fill(byId("agents"), agents.length ? agentChips(agents, 200) : [h("span", { class: "empty", text: "no agent connected" })]);
    byId("session-sub").textContent = session
      ? `${count(session.agent_count)} agents · ${count(session.observer_count)} observers · ${rate(session.publish_rate)} messages/s · ${count(session.publishes)} since start`
      : "no traffic seen in this session yet";
    this.updateReplayTopics(session ? session.topics : []);
  }

  /** @param {any[]} topics */
  updateReplayTopics(topics) {
    const select = byId("replay-topic");
    const durable = topics.filter((t) => t.durable).map((t) => t.topic);
    const current = [...select.options].map((/** @type {HTMLOptionElement} */ o) => o.value);
    if (durable.join("\n") === current.join("\n")) return;
    const chosen = select.value;
    fill(select, durable.map((topic) => h("option", { value: topic, text: topic })));
    if (durable.includes(chosen)) select.value = chosen;
    byId("replay-load").disabled = durable.length === 0;
    if (!durable.length) this.replayStatus("no durable topic in this session (see 'durable' in the node's config)");
    else if (!this.replaySub) this.replayStatus("");
  }

  /** @param {string} text */
  replayStatus(text) {
    byId("replay-status").textContent = text;
  }

  /** Load the last N events of the chosen durable topic. */
  async loadReplay() {
    const topic = byId("replay-topic").value;
    const last = Math.max(1, Math.min(10000, Number(byId("replay-last").value) || 200));
    if (!topic) return;
    this.stopPlay();
    await this.closeReplay();
    this.replayEvents = [];
    this.cursor = -1;
    this.replayStatus(`loading ${topic}…`);
    const client = await this.newClient();
    this.replayClient = client;
    this.replaySub = await client.subscribe(topic, {
      last,
      onEvent: (/** @type {Envelope} */ event) => {
        this.replayEvents.push(event);
        if (this.cursor < 0) this.cursor = 0;
        this.renderReplay();
      },
    });
    this.replayStatus(`${topic}: history from the last ${last} events, then live`);
    this.renderReplay();
  }

  /** @param {number} delta */
  step(delta) {
    if (!this.replayEvents.length) return;
    if (delta === -Infinity) this.moveTo(0);
    else if (delta === Infinity) this.moveTo(this.replayEvents.length - 1);
    else this.moveTo(this.cursor + delta);
  }

  /** @param {number} index */
  moveTo(index) {
    if (!this.replayEvents.length) return;
    this.cursor = Math.max(0, Math.min(this.replayEvents.length - 1, index));
    this.renderReplay();
  }

  /** @param {Envelope} event */
  jumpTo(event) {
    const index = this.replayEvents.findIndex((e) => e.id === event.id);
    if (index >= 0) this.moveTo(index);
  }

  togglePlay() {
    if (this.player) {
      this.stopPlay();
      return;
    }
    byId("replay-play").textContent = "Pause";
    this.player = setInterval(() => {
      if (this.cursor >= this.replayEvents.length - 1) this.stopPlay();
      else this.step(1);
    }, PLAY_EVERY_MS);
  }

  stopPlay() {
    if (this.player) clearInterval(this.player);
    this.player = null;
    byId("replay-play").textContent = "Play";
  }

  renderReplay() {
    const events = this.replayEvents;
    const slider = byId("replay-slider");
    slider.max = String(Math.max(0, events.length - 1));
    slider.value = String(Math.max(0, this.cursor));
    const position = byId("replay-position");
    if (this.cursor < 0 || !events.length) {
      position.textContent = "-";
      position.dataset.seq = "";
      fill(byId("replay-detail"), ["Load a durable topic's history, then step through it."]);
      this.replay.render([], {});
      return;
    }
    const current = events[this.cursor];
    position.textContent = `seq ${current.seq} · ${this.cursor + 1}/${events.length}`;
    position.dataset.seq = String(current.seq);
    position.dataset.index = String(this.cursor);
    // A window of rows around the cursor: what came before it, and what comes next dimmed.
    const rows = this.replay.rows;
    const start = Math.max(0, Math.min(this.cursor - Math.floor(rows * 0.7), events.length - rows));
    const shown = events.slice(start, start + rows);
    const future = new Set(events.slice(this.cursor + 1, start + rows).map((e) => e.id));
    this.replay.render(shown, { current, future });
    byId("replay-detail").textContent = JSON.stringify(current, null, 2);
  }
}
