// Test support: a real agentcast node in a subprocess, and small waiting helpers.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const PYTHON = process.env.AGENTCAST_PYTHON || join(REPO, ".venv", "bin", "python");
const START_TIMEOUT_MS = 30000;

/** Fast reconnects for tests. */
export const FAST = { backoffInitial: 0.01, backoffMax: 0.05, maxReconnectAttempts: 1000 };

/**
 * A node in a subprocess, on free loopback ports (kept across restarts), with an optional
 * SQLite history and durable topic patterns.
 */
export class NodeProcess {
  /**
   * @param {{durable?: string[], extra?: string}} [options]
   */
  constructor(options = {}) {
    this.dir = mkdtempSync(join(tmpdir(), "agentcast-js-"));
    this.config = join(this.dir, "agentcast.toml");
    const lines = ['log_level = "warning"', `history = "sqlite:///${join(this.dir, "history.db")}"`];
    if (options.durable && options.durable.length) {
      lines.push(`durable = [${options.durable.map((p) => JSON.stringify(p)).join(", ")}]`);
    }
    if (options.extra) lines.push(options.extra);
    writeFileSync(this.config, lines.join("\n") + "\n");
    this.wsPort = 0;
    this.httpPort = 0;
    /** @type {import("node:child_process").ChildProcess | null} */
    this.child = null;
    this.exited = Promise.resolve();
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.wsPort}/v1/ws`;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  /** Start the node (on the same ports as before, after a stop) and wait until it listens. */
  async start() {
    const args = [
      "-c",
      "from agentcast.cli import main; main()",
      "serve",
      "--port",
      String(this.wsPort),
      "--http-port",
      String(this.httpPort),
      "--config",
      this.config,
    ];
    // AGENTCAST_* variables are node config keys: pass on none but those of the config file.
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("AGENTCAST_")));
    const child = spawn(PYTHON, args, { stdio: ["ignore", "ignore", "pipe"], cwd: REPO, env });
    this.child = child;
    this.exited = new Promise((done) => child.once("exit", () => done(undefined)));
    let stderr = "";
    await new Promise((resolveStart, rejectStart) => {
      const timer = setTimeout(() => fail(new Error(`the node did not start:\n${stderr}`)), START_TIMEOUT_MS);
      /** @param {Error} error */
      function fail(error) {
        clearTimeout(timer);
        rejectStart(error);
      }
      child.once("error", fail);
      child.once("exit", (code) => fail(new Error(`the node exited with ${code}:\n${stderr}`)));
      child.stderr?.setEncoding("utf8");
      child.stderr?.on("data", (chunk) => {
        stderr += chunk;
        const ws = /websocket\s+ws:\/\/127\.0\.0\.1:(\d+)\//.exec(stderr);
        const http = /http\s+http:\/\/127\.0\.0\.1:(\d+)/.exec(stderr);
        if (ws && http) {
          this.wsPort = Number(ws[1]);
          this.httpPort = Number(http[1]);
          clearTimeout(timer);
          resolveStart(undefined);
        }
      });
    });
    return this;
  }

  /** Graceful stop (SIGTERM: connections close with 4000); waits for the exit. */
  async stop() {
    if (this.child && this.child.exitCode === null) {
      this.child.kill("SIGTERM");
      await this.exited;
    }
    this.child = null;
  }

  /** Hard stop (SIGKILL: no close frame); waits for the exit. */
  async kill() {
    if (this.child && this.child.exitCode === null) {
      this.child.kill("SIGKILL");
      await this.exited;
    }
    this.child = null;
  }

  /** Stop and remove the node's files. */
  async dispose() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /**
   * Publish over the node's HTTP API.
   * @param {Record<string, unknown>} body
   */
  async httpPublish(body) {
    const response = await fetch(`${this.httpUrl}/v1/publish`, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "content-type": "application/json" },
    });
    return { status: response.status, body: await response.json() };
  }
}

/**
 * Resolve with `promise`, or reject after `ms` with `what` in the message.
 * @template T
 * @param {Promise<T>} promise
 * @param {string} what
 * @param {number} [ms]
 * @returns {Promise<T>}
 */
export function within(promise, what, ms = 10000) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, timeout])).finally(() => clearTimeout(timer));
}

/**
 * Collect `count` items from an async iterable (bounded by a timeout).
 * @template T
 * @param {AsyncIterable<T>} iterable
 * @param {number} count
 * @returns {Promise<T[]>}
 */
export function take(iterable, count) {
  return within(
    (async () => {
      /** @type {T[]} */
      const items = [];
      if (count === 0) return items;
      for await (const item of iterable) {
        items.push(item);
        if (items.length >= count) break;
      }
      return items;
    })(),
    `${count} items`,
  );
}

/**
 * A promise that resolves when `predicate(value)` is true for a value passed to `check`.
 * @template T
 * @param {(value: T) => boolean} predicate
 */
export function waiter(predicate) {
  /** @type {(value: T) => void} */
  let resolveIt = () => {};
  const promise = new Promise((res) => {
    resolveIt = res;
  });
  return {
    promise,
    /** @param {T} value */
    check(value) {
      if (predicate(value)) resolveIt(value);
    },
  };
}
