// A scripted in-memory node behind an injected WebSocket implementation, for protocol-level
// tests that a real node cannot be made to produce on demand (refusals, drops, duplicates).

/** @typedef {(socket: FakeSocket, message: any) => void} Handler */

export class FakeSocket {
  /**
   * @param {FakeNode} node
   * @param {string} url
   */
  constructor(node, url) {
    this.node = node;
    this.url = url;
    this.readyState = 0;
    /** @type {Map<string, Set<(event: any) => void>>} */
    this.listeners = new Map();
    /** @type {any[]} */
    this.received = [];
    setTimeout(() => {
      if (node.refuseConnections > 0) {
        node.refuseConnections -= 1;
        this.readyState = 3;
        this.dispatch("error", {});
        this.dispatch("close", { code: 1006, reason: "" });
        return;
      }
      this.readyState = 1;
      this.dispatch("open", {});
    }, 0);
  }

  /**
   * @param {string} type
   * @param {(event: any) => void} listener
   */
  addEventListener(type, listener) {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
  }

  /**
   * @param {string} type
   * @param {(event: any) => void} listener
   */
  removeEventListener(type, listener) {
    this.listeners.get(type)?.delete(listener);
  }

  /**
   * @param {string} type
   * @param {any} event
   */
  dispatch(type, event) {
    for (const listener of [...(this.listeners.get(type) ?? [])]) listener(event);
  }

  /** @param {string} data */
  send(data) {
    if (this.readyState !== 1) throw new Error("not open");
    const message = JSON.parse(data);
    this.received.push(message);
    this.node.record(message);
    queueMicrotask(() => this.node.handler(this, message));
  }

  /** @param {number} [code] */
  close(code = 1000) {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    setTimeout(() => this.dispatch("close", { code, reason: "" }), 0);
  }

  // -- the node's side --

  /** @param {any} message */
  push(message) {
    if (this.readyState !== 1) return;
    setTimeout(() => this.dispatch("message", { data: JSON.stringify(message) }), 0);
  }

  /**
   * @param {any} id
   * @param {any} result
   */
  ok(id, result) {
    if (id !== undefined && id !== null) this.push({ type: "reply", id, ok: true, result });
  }

  /**
   * @param {any} id
   * @param {string} code
   */
  refuse(id, code) {
    this.push({ type: "reply", id, ok: false, error: { code, message: `refused: ${code}` } });
  }

  /**
   * The node drops the connection with `code`.
   * @param {number} code
   */
  drop(code) {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    setTimeout(() => this.dispatch("close", { code, reason: "" }), 0);
  }
}

export class FakeNode {
  constructor() {
    /** @type {FakeSocket[]} */
    this.sockets = [];
    /** @type {any[]} every command received, in order */
    this.log = [];
    /** @type {Array<{predicate: () => boolean, resolve: () => void}>} */
    this.watchers = [];
    this.refuseConnections = 0;
    this.heartbeat = 25;
    this.seq = 0;
    /** @type {Handler} */
    this.handler = (socket, message) => this.answer(socket, message);
    const node = this;
    /** The WebSocket constructor to inject into the client. */
    this.WebSocket = class extends FakeSocket {
      /** @param {string} url */
      constructor(url) {
        super(node, url);
        node.sockets.push(this);
      }
    };
  }

  /** @param {any} message */
  record(message) {
    this.log.push(message);
    this.watchers = this.watchers.filter((watcher) => {
      if (!watcher.predicate()) return true;
      watcher.resolve();
      return false;
    });
  }

  /**
   * Resolves once `predicate()` holds, checked as each command arrives (bounded by `ms`).
   * @param {() => boolean} predicate
   * @param {string} what
   * @param {number} [ms]
   * @returns {Promise<void>}
   */
  waitFor(predicate, what, ms = 5000) {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
      this.watchers.push({
        predicate,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      });
    });
  }

  /** The socket opened last. */
  get socket() {
    return this.sockets[this.sockets.length - 1];
  }

  /**
   * The default answers: hello, subscribe, unsubscribe, publish, ping.
   * @param {FakeSocket} socket
   * @param {any} message
   */
  answer(socket, message) {
    switch (message.cmd) {
      case "hello":
        socket.ok(message.id, {
          connection: `c${this.sockets.length}`,
          node: "fake",
          protocol: 1,
          heartbeat_interval: this.heartbeat,
          resume: {},
        });
        break;
      case "subscribe":
      case "unsubscribe":
        socket.ok(message.id, { topic: message.topic });
        break;
      case "publish":
        this.seq += 1;
        socket.ok(message.id, {
          id: `e${this.seq}`,
          topic: message.topic,
          seq: this.seq,
          epoch: "ep",
          lamport: this.seq,
          duplicate: false,
        });
        break;
      case "ack":
      case "nack":
        socket.ok(message.id, { topic: message.topic, group: message.group, seq: message.seq });
        break;
      case "ping":
        socket.ok(message.id, { time: "2024-01-01T00:00:00Z" });
        break;
      default:
        socket.refuse(message.id, "unknown_command");
    }
  }

  /**
   * The commands named `cmd` received so far.
   * @param {string} cmd
   */
  commands(cmd) {
    return this.log.filter((m) => m.cmd === cmd);
  }
}

/**
 * An envelope for the fake node to push.
 * @param {string} id
 * @param {string} topic
 * @param {number} seq
 * @param {unknown} [payload]
 */
export function envelope(id, topic, seq, payload = null) {
  return {
    id,
    topic,
    seq,
    epoch: "ep",
    time: "2024-01-01T00:00:00.000000Z",
    source: "ac://client/fake",
    correlation_id: null,
    causation_id: null,
    lamport: seq,
    headers: {},
    payload,
  };
}
