// @ts-check
/**
 * The JavaScript client of agentcast (wire protocol v1), for browsers and Node.js 20+.
 *
 * One ES module, no runtime dependency. It uses the global `WebSocket` (every browser; Node 22,
 * or Node 20 started with `--experimental-websocket`), or the constructor passed as the
 * `WebSocket` option (for example the `ws` package's).
 *
 * Contracts (the same as the Python SDK's, `agentcast.client`):
 *
 * - **Acks.** `await client.publish(...)` resolves with the node's ack (`{id, topic, seq, epoch,
 *   lamport, duplicate}`) once the node sequenced the event; on a durable topic, once its
 *   history store committed it. Ephemeral topics keep no history: a subscriber that is away at
 *   that moment misses the event.
 * - **Idempotency.** Every acked publish carries an idempotency key (the caller's or a random
 *   one). A publish still waiting for its ack when the connection drops is sent again with the
 *   same key, in the original order, once the client has reconnected; the node answers a
 *   resend it already sequenced with the original position and `duplicate: true`. An
 *   `overloaded` or `unavailable` refusal is retried with backoff and the same key until
 *   `ackTimeout`; any other refusal rejects at once with a `ClientError` carrying the node's
 *   code.
 * - **Reconnect.** When the connection drops and the close code allows it (`shouldReconnect`),
 *   the client reconnects with exponential backoff and full jitter. `getToken()`, when given,
 *   is called before every connection attempt. The reconnect `hello` resumes every exact topic
 *   whose position is known (the node replays what was missed, then goes live); the other
 *   subscriptions and consumer-group memberships are renewed right behind it; then the
 *   unacked publishes are resent. Commands issued meanwhile wait, bounded by `ackTimeout`.
 * - **Dedupe.** Each subscription drops an event whose envelope id is among the last
 *   `dedupeWindow` ids it delivered, so a replay that overlaps what was already delivered
 *   never yields an event twice.
 * - **Consumer groups.** `subscribe(topic, {group})` joins a group; each delivery has `ack()`
 *   and `nack()`. Deliveries are not deduplicated (a redelivery is a new attempt).
 * - **Failure.** A close code that forbids reconnecting, an exhausted reconnect budget or a
 *   refused `hello` ends the client: waiting commands and subscriptions fail with
 *   `ConnectionClosed`. After `close()`, waiting commands fail the same way and subscription
 *   iterators simply stop.
 * - **Order.** Events reach each subscription in the order the connection received them, which
 *   keeps every topic in `seq` order.
 *
 * Types: see agentcast.d.ts beside this file.
 */

export const PROTOCOL_VERSION = 1;
/** At most this many topics are resumed in one `hello` (the node's limit). */
export const MAX_RESUME_TOPICS = 256;
export const DEFAULT_DEDUPE_WINDOW = 10000;
export const DEFAULT_BUFFER_SIZE = 10000;
export const DEFAULT_MAX_RECONNECT_ATTEMPTS = 100;
const DEFAULT_HEARTBEAT_INTERVAL = 25;

/** Publish refusals that may pass: retried with backoff and the same idempotency key. */
export const RETRYABLE_PUBLISH_CODES = new Set(["overloaded", "unavailable"]);
/** Refusals while renewing a subscription that make the client reconnect and try again. */
const TRANSIENT_RESTORE_CODES = new Set(["unavailable", "overloaded", "internal"]);
const RECONNECT_STANDARD_CODES = new Set([1001, 1006, 1011, 1012, 1013]);
const WS_OPEN = 1;

// -- errors ------------------------------------------------------------------------------

/** Base of every error the client raises; `code` is stable, `message` is for humans. */
export class AgentcastError extends Error {
  /**
   * @param {string} message
   * @param {string} [code]
   */
  constructor(message, code = "internal") {
    super(message);
    this.name = "AgentcastError";
    this.code = code;
  }
}

/** The node refused a command; `code` is the node's error code (docs/protocol.md). */
export class ClientError extends AgentcastError {
  /**
   * @param {string} message
   * @param {string} code
   */
  constructor(message, code) {
    super(message, code);
    this.name = "ClientError";
  }
}

/** The connection closed and will not be reopened; `closeCode` is the WebSocket close code. */
export class ConnectionClosed extends AgentcastError {
  /**
   * @param {string} message
   * @param {number | null} [closeCode]
   */
  constructor(message, closeCode = null) {
    super(message, "connection_closed");
    this.name = "ConnectionClosed";
    this.closeCode = closeCode;
  }
}

/** A command got no answer within `ackTimeout` (or the socket did not open in time). */
export class CommandTimeout extends AgentcastError {
  /** @param {string} message */
  constructor(message) {
    super(message, "timeout");
    this.name = "CommandTimeout";
  }
}

/** The connection a command was sent on closed before its reply came (internal). */
class LinkLost extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "LinkLost";
  }
}

/** A subscription could not be renewed for a reason that may pass: reconnect and retry. */
class RestoreFailed extends LinkLost {}

/** @param {string} pattern */
function unsubscribed(pattern) {
  return new ClientError(`unsubscribed from ${JSON.stringify(pattern)}`, "not_subscribed");
}

function clientClosed() {
  return new ConnectionClosed("the client was closed", 1000);
}

/**
 * A fresh copy of `error`, so each rejection has its own stack.
 * @param {ClientError | ConnectionClosed} error
 * @returns {ClientError | ConnectionClosed}
 */
function renew(error) {
  if (error instanceof ConnectionClosed) return new ConnectionClosed(error.message, error.closeCode);
  return new ClientError(error.message, error.code);
}

// -- pure helpers --------------------------------------------------------------------------

/**
 * Whether a client should reconnect after the server closed with `code`. `null` (no close
 * frame: the TCP connection dropped) means reconnect; 4000-4499 and 1001, 1006, 1011, 1012,
 * 1013 mean reconnect; everything else means do not.
 * @param {number | null | undefined} code
 */
export function shouldReconnect(code) {
  if (code === null || code === undefined) return true;
  if (code >= 4000 && code < 4500) return true;
  if (code >= 4500 && code < 5000) return false;
  return RECONNECT_STANDARD_CODES.has(code);
}

/**
 * Whether `topic` contains a wildcard segment (`*` or `>`).
 * @param {string} topic
 */
export function isPattern(topic) {
  return topic.split(".").some((segment) => segment === "*" || segment === ">");
}

/**
 * Whether the exact `topic` matches `pattern` (`*` is one segment, `>` one or more).
 * @param {string} pattern
 * @param {string} topic
 */
export function matches(pattern, topic) {
  if (pattern === topic) return true;
  const want = pattern.split(".");
  const have = topic.split(".");
  for (let i = 0; i < want.length; i++) {
    const segment = want[i];
    if (segment === ">") return have.length > i;
    if (i >= have.length) return false;
    if (segment !== "*" && segment !== have[i]) return false;
  }
  return want.length === have.length;
}

/**
 * Reconnect delays: attempt `n` (from 0 since the last `reset()`) waits a uniformly random
 * time in `[0, min(maximum, initial * 2**n)]` seconds ("full jitter"), so clients dropped
 * together do not reconnect in lockstep.
 */
export class Backoff {
  /**
   * @param {number} initial seconds
   * @param {number} maximum seconds
   * @param {() => number} [uniform] a random number in [0, 1)
   */
  constructor(initial, maximum, uniform = Math.random) {
    if (initial < 0 || maximum < 0) throw new RangeError("backoff delays must be non-negative");
    this.initial = initial;
    this.maximum = Math.max(initial, maximum);
    this.uniform = uniform;
    this.attempt = 0;
  }

  /** The upper bound of the next delay, in seconds. */
  ceiling() {
    return Math.min(this.maximum, this.initial * 2 ** Math.min(this.attempt, 60));
  }

  /** The delay before the next attempt, in seconds; advances the attempt count. */
  nextDelay() {
    const delay = this.ceiling() * this.uniform();
    this.attempt += 1;
    return delay;
  }

  /** Start again from `initial`. */
  reset() {
    this.attempt = 0;
  }
}

/**
 * The last `size` distinct ids added, forgotten oldest first. `size` 0 remembers nothing.
 */
export class IdWindow {
  /** @param {number} [size] */
  constructor(size = DEFAULT_DEDUPE_WINDOW) {
    if (!(size >= 0)) throw new RangeError("the window size must be non-negative");
    this.size = size;
    /** @type {Set<string>} */
    this.seen = new Set();
  }

  get length() {
    return this.seen.size;
  }

  /** @param {string} id */
  has(id) {
    return this.seen.has(id);
  }

  /**
   * Remember `id`; `false` if it was already in the window.
   * @param {string} id
   */
  add(id) {
    if (this.seen.has(id)) return false;
    if (this.size === 0) return true;
    this.seen.add(id);
    if (this.seen.size > this.size) {
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
    return true;
  }
}

/** A random 128-bit hex string (works in insecure browser contexts too). */
function randomKey() {
  const bytes = new Uint8Array(16);
  const cryptoApi = globalThis.crypto;
  if (cryptoApi && typeof cryptoApi.getRandomValues === "function") {
    cryptoApi.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Milliseconds on a monotonic clock. */
function now() {
  return performance.now();
}

/**
 * @template T
 * @typedef {{promise: Promise<T>, resolve: (value: T) => void, reject: (error: unknown) => void, settled: boolean}} Deferred
 */

/**
 * A promise with its resolvers; a rejection nobody awaits is not reported as unhandled.
 * @template T
 * @returns {Deferred<T>}
 */
function deferred() {
  /** @type {(value: T) => void} */
  let resolve = () => {};
  /** @type {(error: unknown) => void} */
  let reject = () => {};
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {});
  /** @type {Deferred<T>} */
  const d = {
    promise,
    settled: false,
    resolve: (value) => {
      if (d.settled) return;
      d.settled = true;
      resolve(value);
    },
    reject: (error) => {
      if (d.settled) return;
      d.settled = true;
      reject(error);
    },
  };
  return d;
}

/**
 * `promise`, or a `CommandTimeout` at `deadline` (ms on the `now()` clock).
 * @template T
 * @param {Promise<T>} promise
 * @param {number} deadline
 * @param {string} what
 * @returns {Promise<T>}
 */
function withDeadline(promise, deadline, what) {
  const wait = deadline - now();
  if (wait <= 0) {
    return Promise.reject(new CommandTimeout(`${what} timed out`));
  }
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CommandTimeout(`${what} timed out`)), wait);
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, timeout])).finally(() =>
    clearTimeout(timer),
  );
}

/**
 * Resolves after `ms`, or at once when `cancel` settles.
 * @param {number} ms
 * @param {Promise<unknown>} cancel
 */
function sleep(ms, cancel) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const done = new Promise((resolve) => {
    timer = setTimeout(resolve, Math.max(0, ms));
  });
  return Promise.race([done, cancel.then(() => {}, () => {})]).finally(() => clearTimeout(timer));
}

/**
 * A `{epoch, seq}` position from a mapping; throws `TypeError` for anything else.
 * @param {unknown} value
 * @returns {{epoch: string, seq: number}}
 */
function asPosition(value) {
  if (value && typeof value === "object") {
    const { epoch, seq } = /** @type {{epoch?: unknown, seq?: unknown}} */ (value);
    if (typeof epoch === "string" && Number.isInteger(seq) && /** @type {number} */ (seq) >= 0) {
      return { epoch, seq: /** @type {number} */ (seq) };
    }
  }
  throw new TypeError(`a position is {epoch: string, seq: integer >= 0}, not ${JSON.stringify(value)}`);
}

/**
 * @param {unknown} raw
 * @returns {ClientError}
 */
function errorFrom(raw) {
  const error = raw && typeof raw === "object" ? /** @type {Record<string, unknown>} */ (raw) : {};
  return new ClientError(
    String(error.message || "the node refused the command"),
    String(error.code || "internal"),
  );
}

// -- subscriptions -------------------------------------------------------------------------

/** Ordering of position updates across subscriptions (which one saw its topic last). */
let positionUpdates = 0;

/**
 * A bounded local buffer of items with an async iterator and a way to end it.
 * @template T
 */
class Stream {
  /** @param {number} bufferSize */
  constructor(bufferSize) {
    if (!(bufferSize >= 1)) throw new RangeError("bufferSize must be at least 1");
    this.bufferSize = bufferSize;
    /** Items dropped because the local buffer was full. */
    this.dropped = 0;
    /** @type {T[]} */
    this.buffer = [];
    this.head = 0;
    /** @type {Deferred<void> | null} */
    this.waiter = null;
    this.ended = false;
    /** @type {ClientError | ConnectionClosed | null} */
    this.error = null;
    /** @type {ClientError | ConnectionClosed | null} */
    this.reason = null;
  }

  /** Whether items are still being delivered. */
  get active() {
    return !this.ended;
  }

  /** How many received items wait in the local buffer. */
  get pending() {
    return this.buffer.length - this.head;
  }

  /** @param {T} item */
  push(item) {
    if (this.pending >= this.bufferSize) {
      this.head += 1;
      this.dropped += 1;
    }
    this.buffer.push(item);
    if (this.head > 1024 && this.head * 2 > this.buffer.length) {
      this.buffer = this.buffer.slice(this.head);
      this.head = 0;
    }
    this.wake();
  }

  wake() {
    const waiter = this.waiter;
    this.waiter = null;
    if (waiter) waiter.resolve(undefined);
  }

  /** The next buffered item, or `undefined` (the end is not reported). */
  getNowait() {
    if (this.head >= this.buffer.length) return undefined;
    const item = this.buffer[this.head];
    this.head += 1;
    if (this.head === this.buffer.length) {
      this.buffer = [];
      this.head = 0;
    }
    return item;
  }

  /**
   * Stop delivery; buffered items are still handed out first. With `error`, iteration and
   * `get()` reject with it; without, iteration stops and `get()` rejects with `reason`.
   * @param {ClientError | ConnectionClosed | null} [error]
   * @param {ClientError | ConnectionClosed | null} [reason]
   */
  end(error = null, reason = null) {
    if (this.ended) return;
    this.ended = true;
    this.error = error;
    this.reason = reason;
    this.wake();
  }

  /**
   * The next item; `undefined` after a requested end; rejects after a failed end.
   * @returns {Promise<T | undefined>}
   */
  async nextItem() {
    for (;;) {
      if (this.head < this.buffer.length) return this.getNowait();
      if (this.ended) {
        if (this.error) throw renew(this.error);
        return undefined;
      }
      if (!this.waiter) this.waiter = deferred();
      await this.waiter.promise;
    }
  }

  /**
   * The next item, waiting for one; rejects with the end reason once ended and drained.
   * @returns {Promise<T>}
   */
  async get() {
    const item = await this.nextItem();
    if (item === undefined) throw renew(this.reason || new ClientError("ended", "not_subscribed"));
    return item;
  }

  /** @returns {AsyncIterator<T>} */
  [Symbol.asyncIterator]() {
    return {
      next: async () => {
        const item = await this.nextItem();
        return item === undefined
          ? { done: true, value: undefined }
          : { done: false, value: /** @type {T} */ (item) };
      },
      return: async () => ({ done: true, value: undefined }),
    };
  }
}

/**
 * Events of one topic pattern, in the order the connection received them. Consume with
 * `for await (const event of sub)`, `await sub.get()`, or the `onEvent` callback.
 * @extends {Stream<import("./agentcast").Envelope>}
 */
export class Subscription extends Stream {
  /**
   * @param {Client} owner
   * @param {string} pattern
   * @param {import("./agentcast").SubscribeOptions} options
   */
  constructor(owner, pattern, options) {
    super(options.bufferSize ?? DEFAULT_BUFFER_SIZE);
    const history = [options.since, options.last, options.sinceTime].filter((v) => v != null);
    if (history.length > 1) throw new TypeError("use at most one of since, last and sinceTime");
    this.owner = owner;
    this.pattern = pattern;
    this.exact = !isPattern(pattern);
    this.policy = options.policy ?? null;
    this.keyHeader = options.keyHeader ?? "key";
    this.since = options.since == null ? null : asPosition(options.since);
    this.last = options.last ?? null;
    this.sinceTime = options.sinceTime ?? null;
    this.onEvent = options.onEvent ?? null;
    /** Events skipped because their id was already delivered. */
    this.duplicates = 0;
    /** How many times the node could not recover a position. */
    this.gaps = 0;
    /** @type {boolean | null} the node's latest answer to a request with history */
    this.recovered = null;
    /** @type {{epoch: string, seq: number} | null} the position of the last event (exact topics) */
    this.position = null;
    /** @type {boolean | null} false once the node said the topic is not durable */
    this.durable = null;
    this.confirmed = false;
    this.positionUpdate = 0;
    this.seen = new IdWindow(options.dedupeWindow ?? DEFAULT_DEDUPE_WINDOW);
  }

  /** Whether a `hello` resume can restore it (exact, known position, default options). */
  get resumable() {
    return (
      this.exact &&
      this.position !== null &&
      this.durable !== false &&
      (this.policy === null || this.policy === "disconnect")
    );
  }

  /**
   * The `subscribe` command (without id) that (re)creates this subscription.
   * @param {boolean} [history] carry the since/last/sinceTime it was created with
   * @returns {Record<string, unknown>}
   */
  command(history = true) {
    /** @type {Record<string, unknown>} */
    const command = { cmd: "subscribe", topic: this.pattern, key_header: this.keyHeader };
    if (this.policy !== null) command.policy = this.policy;
    if (history) {
      if (this.since !== null) command.since = { ...this.since };
      else if (this.last !== null) command.last = this.last;
      else if (this.sinceTime !== null) command.since_time = this.sinceTime;
    }
    return command;
  }

  /**
   * Hand over one event unless it is a duplicate (internal).
   * @param {import("./agentcast").Envelope} event
   */
  deliver(event) {
    if (this.ended) return;
    if (!this.seen.add(event.id)) {
      this.duplicates += 1;
      return;
    }
    if (this.exact) this.advance({ epoch: event.epoch, seq: event.seq });
    if (this.onEvent) {
      try {
        this.onEvent(event);
      } catch (error) {
        this.owner.logger.warn("agentcast: an onEvent callback failed", error);
      }
      return;
    }
    this.push(event);
  }

  /**
   * Move `position` forward: another epoch, or a higher seq in the same one (internal).
   * @param {{epoch: string, seq: number}} position
   */
  advance(position) {
    const current = this.position;
    if (current === null || current.epoch !== position.epoch || position.seq > current.seq) {
      this.position = { epoch: position.epoch, seq: position.seq };
      positionUpdates += 1;
      this.positionUpdate = positionUpdates;
    }
  }

  /**
   * Take in the node's answer to a request with history (internal).
   * @param {unknown} result
   * @param {{epoch: string, seq: number} | null} since
   */
  applyHistoryReply(result, since) {
    if (!result || typeof result !== "object" || !("recovered" in result)) return;
    const reply = /** @type {{recovered: unknown, epoch?: unknown, seq?: unknown}} */ (result);
    this.durable = true;
    this.recovered = Boolean(reply.recovered);
    if (this.recovered) {
      if (since !== null) this.advance(since);
      return;
    }
    this.gaps += 1;
    if (typeof reply.epoch === "string" && Number.isInteger(reply.seq)) {
      this.advance({ epoch: reply.epoch, seq: /** @type {number} */ (reply.seq) });
    }
  }

  /**
   * End this subscription and tell the node, unless another local subscription of the same
   * client holds the same pattern. Idempotent; buffered events can still be read.
   */
  async unsubscribe() {
    await this.owner.release(this);
  }
}

/** The longest nack delay and ack timeout the node accepts, in seconds. */
const MAX_ACK_TIMEOUT = 86400;
/** The longest nack reason the node keeps (a header value). */
const MAX_HEADER_VALUE = 1024;

/**
 * @param {string} topic
 * @param {string} group
 */
function leftGroup(topic, group) {
  return new ClientError(`left group ${JSON.stringify(group)} on ${JSON.stringify(topic)}`, "not_subscribed");
}

/**
 * One delivery of an event to this member of a consumer group: settle it with `ack()` or
 * `nack()`. Acks belong to the connection the delivery came on: once that connection is gone
 * (or the membership ended) the node has taken the delivery back, so settling it is dropped
 * locally (counted in `staleAcks`) and resolves `false`; the event comes again.
 */
export class GroupDelivery {
  /**
   * @param {GroupSubscription} membership
   * @param {Link} link
   * @param {import("./agentcast").Envelope} envelope
   * @param {number} attempt
   */
  constructor(membership, link, envelope, attempt) {
    this.membership = membership;
    this.link = link;
    this.envelope = envelope;
    /** 1 on first delivery. */
    this.attempt = attempt;
    this.settled = false;
  }

  get topic() {
    return this.envelope.topic;
  }

  get group() {
    return this.membership.group;
  }

  get seq() {
    return this.envelope.seq;
  }

  /** Whether the node may still hold this delivery for us. */
  get current() {
    return this.link.alive && this.membership.active;
  }

  /**
   * Mark the event done for the group. Resolves `true` once the node confirmed, `false` when
   * nothing was sent (already settled, or stale); rejects with `not_in_flight` when the node
   * gave the delivery to another member meanwhile.
   */
  ack() {
    return this.settle({ cmd: "ack" });
  }

  /**
   * Give the event back: delivered again (to any member) after `delay` seconds, or
   * dead-lettered with `reason` if this was the last allowed attempt.
   * @param {{delay?: number, reason?: string}} [options]
   */
  nack(options = {}) {
    const delay = options.delay ?? 0;
    if (typeof delay !== "number" || !Number.isFinite(delay) || delay < 0 || delay > MAX_ACK_TIMEOUT) {
      return Promise.reject(new RangeError(`delay must be between 0 and ${MAX_ACK_TIMEOUT} seconds`));
    }
    /** @type {Record<string, unknown>} */
    const command = { cmd: "nack", delay };
    if (options.reason) command.reason = options.reason.slice(0, MAX_HEADER_VALUE);
    return this.settle(command);
  }

  /**
   * @param {Record<string, unknown>} command
   * @returns {Promise<boolean>}
   */
  async settle(command) {
    if (this.settled) return false;
    this.settled = true;
    const membership = this.membership;
    if (!this.current) {
      membership.staleAcks += 1;
      return false;
    }
    const full = { ...command, topic: this.topic, group: membership.group, seq: this.seq };
    try {
      await this.link.request(full, now() + membership.owner.ackTimeout * 1000);
    } catch (error) {
      if (error instanceof LinkLost) {
        membership.staleAcks += 1;
        return false;
      }
      throw error;
    }
    return true;
  }
}

/**
 * This client's membership in one consumer group of a durable topic; yields `GroupDelivery`
 * objects. Deliveries are never deduplicated (a redelivery is a new attempt) and reach only
 * their membership, never a plain subscription. After a reconnect the client joins again;
 * deliveries of the old connection still buffered are discarded (the node redelivers them).
 * @extends {Stream<GroupDelivery>}
 */
export class GroupSubscription extends Stream {
  /**
   * @param {Client} owner
   * @param {string} topic
   * @param {string} group
   * @param {import("./agentcast").GroupOptions} options
   */
  constructor(owner, topic, group, options) {
    super(Number.MAX_SAFE_INTEGER);
    this.owner = owner;
    this.topic = topic;
    this.group = group;
    this.options = options;
    this.onDelivery = options.onDelivery ?? null;
    /** @type {import("./agentcast").GroupInfo | null} the node's latest answer to a join */
    this.info = null;
    this.confirmed = false;
    this.received = 0;
    this.staleAcks = 0;
    this.discarded = 0;
    this.rejoins = 0;
  }

  get key() {
    return `${this.topic}\u0000${this.group}`;
  }

  /** @returns {Record<string, unknown>} the `subscribe` command that joins the group */
  command() {
    const o = this.options;
    /** @type {Record<string, unknown>} */
    const command = { cmd: "subscribe", topic: this.topic, group: this.group, key_header: o.keyHeader ?? "key" };
    if (o.ackTimeout != null) command.ack_timeout = o.ackTimeout;
    if (o.maxDeliver != null) command.max_deliver = o.maxDeliver;
    if (o.maxInFlight != null) command.max_in_flight = o.maxInFlight;
    if (o.deadLetterTopic != null) command.dead_letter_topic = o.deadLetterTopic;
    return command;
  }

  /**
   * The node accepted a join (internal).
   * @param {any} result
   */
  joined(result) {
    if (result && typeof result === "object" && typeof result.floor === "number") {
      this.info = {
        floor: result.floor,
        ackTimeout: Number(result.ack_timeout),
        maxDeliver: Number(result.max_deliver),
        maxInFlight: Number(result.max_in_flight),
      };
    }
    if (this.confirmed) this.rejoins += 1;
    this.confirmed = true;
  }

  /**
   * Buffer (or hand to `onDelivery`) a delivery received on `link` (internal).
   * @param {Link} link
   * @param {import("./agentcast").Envelope} envelope
   * @param {number} attempt
   */
  deliver(link, envelope, attempt) {
    if (this.ended) return;
    this.received += 1;
    const delivery = new GroupDelivery(this, link, envelope, attempt);
    if (this.onDelivery) {
      try {
        this.onDelivery(delivery);
      } catch (error) {
        this.owner.logger.warn("agentcast: an onDelivery callback failed", error);
      }
      return;
    }
    this.push(delivery);
  }

  /**
   * End the membership and discard the buffered deliveries (the node takes them back).
   * @param {ClientError | ConnectionClosed | null} [error]
   * @param {ClientError | ConnectionClosed | null} [reason]
   */
  end(error = null, reason = null) {
    if (this.ended) return;
    this.discarded += this.pending;
    this.buffer = [];
    this.head = 0;
    super.end(error, reason || leftGroup(this.topic, this.group));
  }

  /** @returns {Promise<GroupDelivery | undefined>} */
  async nextItem() {
    for (;;) {
      const delivery = await super.nextItem();
      if (delivery === undefined || delivery.current) return delivery;
      this.discarded += 1;
    }
  }

  /** Leave the group: the node gives this member's unacked deliveries to the others. */
  async leave() {
    await this.owner.leaveGroup(this);
  }

  /** The same as `leave()`. */
  unsubscribe() {
    return this.leave();
  }
}

// -- one connection ------------------------------------------------------------------------

/**
 * @typedef {{deferred: Deferred<unknown>, resend: boolean}} ReplyWaiter
 */

/** A publish waiting for its ack; resent on every new connection until acked. */
class PendingPublish {
  /** @param {Record<string, unknown>} command everything but `id` and `lamport` */
  constructor(command) {
    this.command = command;
    /** @type {Deferred<unknown>} */
    this.deferred = deferred();
    this.generation = -1;
  }

  /** Prepare a retry after a refusal. */
  renew() {
    this.deferred = deferred();
    this.generation = -1;
  }
}

/** One WebSocket: sending, reply bookkeeping, and its end. */
class Link {
  /**
   * @param {WebSocket} ws
   * @param {number} generation
   * @param {() => number} nextId
   */
  constructor(ws, generation, nextId) {
    this.ws = ws;
    this.generation = generation;
    this.nextId = nextId;
    /** @type {Map<number, ReplyWaiter>} */
    this.replies = new Map();
    this.alive = true;
    this.ready = false;
    this.heartbeatInterval = DEFAULT_HEARTBEAT_INTERVAL;
    this.lastSend = now();
    /** @type {number | null} */
    this.closeCode = null;
    this.closeReason = "";
    /** @type {Deferred<void>} */
    this.closed = deferred();
  }

  /**
   * Send one command now; throws `LinkLost` if the socket is not open.
   * @param {Record<string, unknown>} message
   */
  send(message) {
    if (!this.alive || this.ws.readyState !== WS_OPEN) {
      throw new LinkLost("the connection is closed");
    }
    this.ws.send(JSON.stringify(message));
    this.lastSend = now();
  }

  /**
   * Send `command` with a new id (synchronously) and resolve with its reply's result.
   * @param {Record<string, unknown>} command
   * @param {number} deadline
   * @returns {Promise<any>}
   */
  request(command, deadline) {
    const id = this.nextId();
    /** @type {Deferred<unknown>} */
    const waiter = deferred();
    this.replies.set(id, { deferred: waiter, resend: false });
    try {
      this.send({ ...command, id });
    } catch (error) {
      this.replies.delete(id);
      return Promise.reject(error);
    }
    return withDeadline(waiter.promise, deadline, String(command.cmd)).finally(() =>
      this.replies.delete(id),
    );
  }

  /**
   * Send `command` with a new id; its reply settles `pending`, which the link never fails.
   * @param {Record<string, unknown>} command
   * @param {Deferred<unknown>} pending
   */
  sendResendable(command, pending) {
    const id = this.nextId();
    this.replies.set(id, { deferred: pending, resend: true });
    this.send({ ...command, id });
  }

  /** @param {unknown} id */
  take(id) {
    if (typeof id !== "number") return undefined;
    const waiter = this.replies.get(id);
    this.replies.delete(id);
    return waiter;
  }

  /** Mark the link closed and fail every waiting command that is not resent. */
  lost() {
    this.alive = false;
    this.ready = false;
    const replies = this.replies;
    this.replies = new Map();
    for (const waiter of replies.values()) {
      if (!waiter.resend) waiter.deferred.reject(new LinkLost("the connection closed before the reply"));
    }
    this.closed.resolve(undefined);
  }

  /** Close the socket (normal closure). */
  shutdown() {
    if (this.ws.readyState <= WS_OPEN) {
      try {
        this.ws.close(1000);
      } catch {
        // already closing
      }
    }
    this.lost();
  }
}

/**
 * Open a WebSocket, resolving once it is open.
 * @param {import("./agentcast").WebSocketConstructor} Ctor
 * @param {string} url
 * @param {number} timeoutMs
 * @returns {Promise<WebSocket>}
 */
function openSocket(Ctor, url, timeoutMs) {
  return new Promise((resolve, reject) => {
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new Ctor(url);
    } catch (error) {
      reject(error);
      return;
    }
    const timer = setTimeout(() => {
      cleanup();
      try {
        ws.close();
      } catch {
        // never opened
      }
      reject(new CommandTimeout(`opening ${url} timed out`));
    }, timeoutMs);
    const onOpen = () => {
      cleanup();
      resolve(ws);
    };
    /** @param {Event} event */
    const onFail = (event) => {
      cleanup();
      const code = "code" in event ? ` (code ${event.code})` : "";
      reject(new LinkLost(`cannot connect to ${url}${code}`));
    };
    function cleanup() {
      clearTimeout(timer);
      ws.removeEventListener("open", onOpen);
      ws.removeEventListener("error", onFail);
      ws.removeEventListener("close", onFail);
    }
    ws.addEventListener("open", onOpen);
    ws.addEventListener("error", onFail);
    ws.addEventListener("close", onFail);
  });
}

// -- restoring a session -------------------------------------------------------------------

/**
 * Where a pattern's local subscriptions resume from: the oldest known position in the epoch
 * seen most recently.
 * @param {Subscription[]} subs
 */
function groupPosition(subs) {
  const known = subs.filter((sub) => sub.exact && sub.position !== null);
  if (known.length === 0) return null;
  const newest = known.reduce((a, b) => (b.positionUpdate > a.positionUpdate ? b : a));
  const epoch = /** @type {{epoch: string, seq: number}} */ (newest.position).epoch;
  let best = null;
  for (const sub of known) {
    const position = /** @type {{epoch: string, seq: number}} */ (sub.position);
    if (position.epoch === epoch && (best === null || position.seq < best.seq)) best = position;
  }
  return best;
}

/** One pattern to renew: its local subscriptions and the position they resume from. */
class Renewal {
  /** @param {Subscription[]} subs */
  constructor(subs) {
    this.subs = subs;
    this.position = groupPosition(subs);
  }

  get pattern() {
    return this.subs[0].pattern;
  }

  get latest() {
    return this.subs[this.subs.length - 1];
  }

  get resumable() {
    return this.position !== null && this.latest.resumable;
  }

  /** @returns {[Record<string, unknown>, {epoch: string, seq: number} | null]} */
  command() {
    const latest = this.latest;
    if (this.position !== null && latest.exact && latest.durable !== false) {
      const command = latest.command(false);
      command.since = { ...this.position };
      return [command, this.position];
    }
    const history = latest.durable !== false;
    return [latest.command(history), history ? latest.since : null];
  }

  /**
   * @param {unknown} result
   * @param {{epoch: string, seq: number} | null} since
   */
  apply(result, since) {
    for (const sub of this.subs) sub.applyHistoryReply(result, since);
  }

  markEphemeral() {
    for (const sub of this.subs) sub.durable = false;
  }
}

/** @param {Record<string, unknown>} command */
function wantsHistory(command) {
  return command.since != null || command.last != null || command.since_time != null;
}

// -- the client ----------------------------------------------------------------------------

const SILENT = () => {};

/** An agentcast session: publish, subscribe, and stay connected. */
export class Client {
  /**
   * @param {string} url the node's WebSocket URL, e.g. `ws://127.0.0.1:8765/v1/ws`
   * @param {import("./agentcast").ClientOptions} [options]
   */
  constructor(url, options = {}) {
    const maxAttempts = options.maxReconnectAttempts ?? DEFAULT_MAX_RECONNECT_ATTEMPTS;
    if (!(maxAttempts >= 1)) throw new RangeError("maxReconnectAttempts must be at least 1");
    const Ctor = options.WebSocket ?? globalThis.WebSocket;
    if (typeof Ctor !== "function") {
      throw new TypeError(
        "no WebSocket implementation: pass the WebSocket option (Node 20 needs --experimental-websocket or the ws package)",
      );
    }
    this.url = url;
    this.name = options.name ?? null;
    this.token = options.token ?? null;
    this.getToken = options.getToken ?? null;
    this.reconnect = options.reconnect ?? true;
    this.ackTimeout = options.ackTimeout ?? 10;
    this.connectTimeout = options.connectTimeout ?? 10;
    this.maxReconnectAttempts = maxAttempts;
    this.dedupeWindow = options.dedupeWindow ?? DEFAULT_DEDUPE_WINDOW;
    this.WebSocket = Ctor;
    const logger = options.logger ?? { warn: console.warn.bind(console) };
    this.logger = {
      warn: logger.warn ? logger.warn.bind(logger) : SILENT,
      info: logger.info ? logger.info.bind(logger) : SILENT,
    };
    this.backoff = new Backoff(options.backoffInitial ?? 0.1, options.backoffMax ?? 5, options.random);
    /** The highest Lamport time seen in any event or reply; sent with every publish. */
    this.lamport = 0;
    /** Successful reconnects so far. */
    this.reconnects = 0;
    /** Publishes sent again after `overloaded`/`unavailable`. */
    this.publishRetries = 0;
    /** @type {string | null} */
    this.connectionId = null;
    /** @type {string | null} */
    this.nodeId = null;
    /** @type {import("./agentcast").ClientState} */
    this.state = "idle";
    this.ids = 0;
    this.generations = 0;
    /** @type {Link | null} */
    this.link = null;
    /** @type {Subscription[]} */
    this.subs = [];
    /** @type {GroupSubscription[]} */
    this.memberships = [];
    /** @type {Set<PendingPublish>} */
    this.inflight = new Set();
    /** @type {Deferred<void>} */
    this.pulse = deferred();
    /** @type {ConnectionClosed | null} */
    this.failure = null;
    this.started = false;
    this.closing = false;
    /** @type {Deferred<void>} */
    this.closeSignal = deferred();
    /** @type {Promise<void> | null} */
    this.supervisor = null;
    /** @type {Map<string, Set<(detail: any) => void>>} */
    this.listeners = new Map();
  }

  // -- state ---------------------------------------------------------------------------

  /** Whether a session is established (`hello` answered, subscriptions renewed). */
  get connected() {
    const link = this.link;
    return link !== null && link.ready && link.alive;
  }

  /** The live subscriptions, in subscribe order. */
  get subscriptions() {
    return [...this.subs];
  }

  /** The live consumer-group memberships, in join order. */
  get groups() {
    return [...this.memberships];
  }

  /**
   * Listen to `state` (detail: the new state), `reconnect` (detail: {attempt}) or `error`
   * (detail: the terminal ConnectionClosed). Returns a function that removes the listener.
   * @param {string} type
   * @param {(detail: any) => void} listener
   */
  on(type, listener) {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  /**
   * @param {string} type
   * @param {unknown} detail
   */
  emit(type, detail) {
    for (const listener of this.listeners.get(type) ?? []) {
      try {
        listener(detail);
      } catch (error) {
        this.logger.warn("agentcast: a listener failed", error);
      }
    }
  }

  /** @param {import("./agentcast").ClientState} state */
  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  signal() {
    const pulse = this.pulse;
    this.pulse = deferred();
    pulse.resolve(undefined);
  }

  // -- lifecycle -------------------------------------------------------------------------

  /**
   * Open the connection and the session; rejects if that fails (no retry here): a
   * `ClientError` if the node refuses `hello`, `CommandTimeout`, or `ConnectionClosed`.
   */
  async connect() {
    if (this.closing) throw clientClosed();
    if (this.started) throw new Error("connect() was already called");
    this.started = true;
    this.setState("connecting");
    try {
      await this.open();
    } catch (error) {
      this.started = false;
      this.setState("idle");
      if (error instanceof LinkLost) {
        throw new ConnectionClosed(`the connection closed during hello: ${error.message}`);
      }
      throw error;
    }
    if (this.closing) {
      this.link?.shutdown();
      this.link = null;
      throw clientClosed();
    }
    this.supervisor = this.supervise();
  }

  /**
   * End the session: close the socket, fail waiting commands with `ConnectionClosed` (1000),
   * stop subscription iterators after their buffered events. Idempotent.
   */
  async close() {
    if (this.closing) {
      await this.supervisor;
      return;
    }
    this.closing = true;
    this.closeSignal.resolve(undefined);
    const link = this.link;
    if (link !== null) link.shutdown();
    try {
      await this.supervisor;
    } finally {
      this.link = null;
      this.terminate(clientClosed(), true);
    }
  }

  // -- commands --------------------------------------------------------------------------

  /**
   * Publish one event to the exact `topic`. See the module contract.
   * @param {string} topic
   * @param {unknown} [payload]
   * @param {import("./agentcast").PublishOptions} [options]
   * @returns {Promise<import("./agentcast").PublishAck | null>}
   */
  async publish(topic, payload = null, options = {}) {
    this.checkUsable();
    const deadline = now() + this.ackTimeout * 1000;
    /** @type {Record<string, unknown>} */
    const command = {
      cmd: "publish",
      topic,
      payload: payload === undefined ? null : payload,
      idempotency_key: options.idempotencyKey ?? randomKey(),
    };
    if (options.headers && Object.keys(options.headers).length) command.headers = { ...options.headers };
    if (options.correlationId != null) command.correlation_id = options.correlationId;
    if (options.causationId != null) command.causation_id = options.causationId;
    if (options.ack === false) {
      command.ack = false;
      await this.sendUnacked(command, deadline);
      return null;
    }
    const pending = new PendingPublish(command);
    this.inflight.add(pending);
    const retry = new Backoff(this.backoff.initial, this.backoff.maximum, this.backoff.uniform);
    /** @type {any} */
    let result;
    try {
      for (;;) {
        // Once a link is ready, the reconnect has resent every older pending publish:
        // sending now keeps the original order. If this one was resent too, skip it.
        const link = await this.waitLink(deadline);
        if (pending.generation !== link.generation && !pending.deferred.settled) {
          try {
            this.transmit(link, pending);
          } catch (error) {
            if (!(error instanceof LinkLost)) throw error; // the next link resends it
          }
        }
        try {
          result = await withDeadline(pending.deferred.promise, deadline, "publish");
          break;
        } catch (error) {
          if (!(error instanceof ClientError) || !RETRYABLE_PUBLISH_CODES.has(error.code)) throw error;
          const delay = retry.nextDelay() * 1000;
          if (now() + delay >= deadline) throw error;
          await sleep(delay, this.closeSignal.promise);
          this.checkUsable();
          this.publishRetries += 1;
          pending.renew();
        }
      }
    } finally {
      this.inflight.delete(pending);
    }
    return {
      id: String(result.id),
      topic: String(result.topic),
      seq: Number(result.seq),
      epoch: String(result.epoch),
      lamport: Number(result.lamport),
      duplicate: Boolean(result.duplicate),
    };
  }

  /**
   * Subscribe to an exact topic or a wildcard pattern; with `group`, join a consumer group.
   * @param {string} pattern
   * @param {import("./agentcast").SubscribeOptions} [options]
   * @returns {Promise<any>}
   */
  async subscribe(pattern, options = {}) {
    this.checkUsable();
    if (options.group != null) {
      return this.joinGroup(pattern, options.group, { ...options, onDelivery: options.onDelivery ?? options.onEvent });
    }
    const deadline = now() + this.ackTimeout * 1000;
    const sub = new Subscription(this, pattern, {
      dedupeWindow: this.dedupeWindow,
      ...options,
    });
    this.subs.push(sub);
    /** @type {unknown} */
    let result;
    try {
      result = await this.call(sub.command(), deadline);
    } catch (error) {
      this.discard(sub);
      sub.end(null, unsubscribed(pattern));
      throw error;
    }
    sub.applyHistoryReply(result, sub.since);
    sub.confirmed = true;
    return sub;
  }

  /**
   * Join the consumer group `group` of the durable exact `topic`; resolves once the node
   * confirmed. The options apply when this join creates the group on the node; a group that
   * exists keeps its settings (see `membership.info`). Throws an `Error` if this client is
   * already a member of that group.
   * @param {string} topic
   * @param {string} group
   * @param {import("./agentcast").GroupOptions} [options]
   * @returns {Promise<GroupSubscription>}
   */
  async joinGroup(topic, group, options = {}) {
    this.checkUsable();
    const deadline = now() + this.ackTimeout * 1000;
    const membership = new GroupSubscription(this, topic, group, options);
    if (this.memberships.some((g) => g.key === membership.key)) {
      throw new Error(`this client is already a member of group ${group} on ${topic}`);
    }
    this.memberships.push(membership);
    try {
      membership.joined(await this.call(membership.command(), deadline));
    } catch (error) {
      this.memberships = this.memberships.filter((g) => g !== membership);
      membership.end(null, leftGroup(topic, group));
      throw error;
    }
    return membership;
  }

  /** Round-trip a `ping`; resolves with the node's time (RFC 3339). */
  async ping() {
    this.checkUsable();
    const result = await this.call({ cmd: "ping" }, now() + this.ackTimeout * 1000);
    return result && typeof result === "object" ? String(result.time ?? "") : "";
  }

  /**
   * End `sub`; unsubscribe on the node unless another live one has its pattern (internal).
   * @param {Subscription} sub
   */
  async release(sub) {
    const held = this.subs.includes(sub);
    this.discard(sub);
    sub.end(null, unsubscribed(sub.pattern));
    if (!held || this.subs.some((s) => s.pattern === sub.pattern)) return;
    await this.tellNode({ cmd: "unsubscribe", topic: sub.pattern });
  }

  /**
   * Leave a consumer group (internal).
   * @param {GroupSubscription} sub
   */
  async leaveGroup(sub) {
    const held = this.memberships.includes(sub);
    this.memberships = this.memberships.filter((g) => g !== sub);
    sub.end(null, leftGroup(sub.topic, sub.group));
    if (!held) return;
    await this.tellNode({ cmd: "unsubscribe", topic: sub.topic, group: sub.group });
  }

  /**
   * Send `command` on the current link if there is one (the next link will not renew what it
   * undoes); `not_subscribed` is not an error here.
   * @param {Record<string, unknown>} command
   */
  async tellNode(command) {
    const link = this.link;
    if (link === null || !link.ready || !link.alive) return;
    try {
      await link.request(command, now() + this.ackTimeout * 1000);
    } catch (error) {
      if (error instanceof LinkLost) return;
      if (error instanceof ClientError && error.code === "not_subscribed") return;
      throw error;
    }
  }

  /** @param {Subscription} sub */
  discard(sub) {
    const index = this.subs.indexOf(sub);
    if (index >= 0) this.subs.splice(index, 1);
  }

  // -- sending ---------------------------------------------------------------------------

  checkUsable() {
    if (this.failure !== null) throw renew(this.failure);
    if (!this.started) throw new Error("call connect() first");
  }

  /**
   * The current established link, waiting for a reconnect until `deadline`.
   * @param {number} deadline
   * @returns {Promise<Link>}
   */
  async waitLink(deadline) {
    for (;;) {
      if (this.failure !== null) throw renew(this.failure);
      const link = this.link;
      if (link !== null && link.ready && link.alive) return link;
      await withDeadline(this.pulse.promise, deadline, "waiting for the connection");
    }
  }

  /**
   * `request` on the current link, sent again on the next one if the link is lost.
   * @param {Record<string, unknown>} command
   * @param {number} deadline
   */
  async call(command, deadline) {
    for (;;) {
      const link = await this.waitLink(deadline);
      try {
        return await link.request(command, deadline);
      } catch (error) {
        if (!(error instanceof LinkLost)) throw error;
      }
    }
  }

  /**
   * (Re)send a pending publish on `link` with a fresh id and the current clock.
   * @param {Link} link
   * @param {PendingPublish} pending
   */
  transmit(link, pending) {
    pending.generation = link.generation;
    link.sendResendable({ ...pending.command, lamport: this.lamport }, pending.deferred);
  }

  /**
   * Write an `ack: false` publish once a link is ready (no resend after that).
   * @param {Record<string, unknown>} command
   * @param {number} deadline
   */
  async sendUnacked(command, deadline) {
    for (;;) {
      const link = await this.waitLink(deadline);
      try {
        link.send({ ...command, lamport: this.lamport });
        return;
      } catch (error) {
        if (!(error instanceof LinkLost)) throw error;
      }
    }
  }

  // -- receiving -------------------------------------------------------------------------

  /**
   * Route one server message; never throws.
   * @param {Link} link
   * @param {unknown} raw
   */
  onMessage(link, raw) {
    if (typeof raw !== "string") {
      this.logger.warn("agentcast: ignored a binary server message");
      return;
    }
    /** @type {any} */
    let data;
    try {
      data = JSON.parse(raw);
    } catch (error) {
      this.logger.warn("agentcast: ignored a server message that is not JSON", error);
      return;
    }
    if (!data || typeof data !== "object") return;
    if (data.type === "event") {
      const event = data.event;
      if (!event || typeof event !== "object" || typeof event.id !== "string" || typeof event.topic !== "string") {
        this.logger.warn("agentcast: ignored a malformed event");
        return;
      }
      if (typeof event.lamport === "number" && event.lamport > this.lamport) this.lamport = event.lamport;
      if (typeof data.group === "string") {
        const attempt = typeof data.attempt === "number" ? data.attempt : 1;
        for (const sub of this.memberships) {
          if (sub.group === data.group && sub.topic === event.topic) sub.deliver(link, event, attempt);
        }
        return;
      }
      for (const sub of [...this.subs]) {
        if (matches(sub.pattern, event.topic)) sub.deliver(event);
      }
    } else if (data.type === "reply") {
      this.onReply(link, data);
    }
  }

  /**
   * @param {Link} link
   * @param {any} reply
   */
  onReply(link, reply) {
    const result = reply.ok === true ? reply.result : undefined;
    if (result && typeof result === "object" && typeof result.lamport === "number" && result.lamport > this.lamport) {
      this.lamport = result.lamport;
    }
    const waiter = link.take(reply.id);
    if (waiter === undefined) {
      if (reply.ok !== true) {
        const error = errorFrom(reply.error);
        this.logger.warn(`agentcast: the node refused a command: ${error.message} (${error.code})`);
      }
      return;
    }
    if (reply.ok === true) waiter.deferred.resolve(result);
    else waiter.deferred.reject(errorFrom(reply.error));
  }

  // -- connection management ---------------------------------------------------------------

  /** Connect, say hello, renew subscriptions, resend unacked publishes, then go ready. */
  async open() {
    const token = this.getToken ? await this.getToken() : this.token;
    const ws = await openSocket(this.WebSocket, this.url, this.connectTimeout * 1000);
    if (this.closing) {
      ws.close(1000);
      throw new LinkLost("the client was closed");
    }
    this.generations += 1;
    const link = new Link(ws, this.generations, () => ++this.ids);
    this.link = link;
    ws.addEventListener("message", (event) => this.onMessage(link, event.data));
    ws.addEventListener("close", (event) => {
      link.closeCode = event.code === 1005 ? null : event.code;
      link.closeReason = event.reason || "";
      link.lost();
    });
    try {
      await this.restoreSession(link, token ?? null);
      this.resendInflight(link);
      if (!link.alive) throw new LinkLost("the connection closed while the session was restored");
      link.ready = true;
      this.setState("connected");
      this.signal();
    } catch (error) {
      link.shutdown();
      if (this.link === link) this.link = null;
      throw error;
    }
  }

  /**
   * Say `hello` (resuming durable topics from their positions) and renew the other
   * subscriptions and group memberships right behind it, in one round trip.
   * @param {Link} link
   * @param {string | null} token
   */
  async restoreSession(link, token) {
    const deadline = now() + this.ackTimeout * 1000;
    /** @type {Map<string, Subscription[]>} */
    const byPattern = new Map();
    for (const sub of this.subs) {
      if (!sub.confirmed) continue;
      const list = byPattern.get(sub.pattern);
      if (list) list.push(sub);
      else byPattern.set(sub.pattern, [sub]);
    }
    /** @type {Renewal[]} */
    const resumed = [];
    /** @type {Array<[Renewal, Record<string, unknown>, {epoch: string, seq: number} | null]>} */
    const subscribed = [];
    for (const subs of byPattern.values()) {
      const renewal = new Renewal(subs);
      if (renewal.resumable && resumed.length < MAX_RESUME_TOPICS) resumed.push(renewal);
      else subscribed.push([renewal, ...renewal.command()]);
    }
    const groups = this.memberships.filter((g) => g.confirmed);
    /** @type {Record<string, unknown>} */
    const hello = { cmd: "hello", client: this.name, token, protocol: PROTOCOL_VERSION };
    if (resumed.length) {
      /** @type {Record<string, {epoch: string, seq: number}>} */
      const resume = {};
      for (const renewal of resumed) resume[renewal.pattern] = { ...(renewal.position ?? { epoch: "", seq: 0 }) };
      hello.resume = resume;
    }
    // Each request writes its frame synchronously, so the node reads the hello first.
    const helloReply = link.request(hello, deadline);
    const subReplies = subscribed.map(([, command]) => link.request(command, deadline));
    const groupReplies = groups.map((g) => link.request(g.command(), deadline));
    const [helloOutcome, ...outcomes] = await Promise.allSettled([helloReply, ...subReplies, ...groupReplies]);
    if (helloOutcome.status === "rejected") throw helloOutcome.reason;
    const result = helloOutcome.value;
    let resumeResult = null;
    if (result && typeof result === "object") {
      this.connectionId = typeof result.connection === "string" ? result.connection : null;
      this.nodeId = typeof result.node === "string" ? result.node : null;
      if (typeof result.heartbeat_interval === "number" && result.heartbeat_interval > 0) {
        link.heartbeatInterval = result.heartbeat_interval;
      }
      resumeResult = result.resume;
    }
    /** @type {Renewal[]} */
    const followups = [];
    const entries = resumeResult && typeof resumeResult === "object" ? resumeResult : {};
    for (const renewal of resumed) {
      const entry = entries[renewal.pattern];
      if (entry && typeof entry === "object" && "error" in entry) {
        const error = errorFrom(entry.error);
        if (error.code === "not_durable") {
          renewal.markEphemeral();
          followups.push(renewal);
        } else {
          this.refuse(renewal.pattern, error);
        }
      } else if (entry && typeof entry === "object") {
        renewal.apply(entry, renewal.position);
      } else {
        followups.push(renewal);
      }
    }
    subscribed.forEach(([renewal, command, since], i) => {
      const outcome = outcomes[i];
      if (outcome.status === "fulfilled") {
        renewal.apply(outcome.value, since);
        return;
      }
      const error = outcome.reason;
      if (!(error instanceof ClientError)) throw error;
      if (error.code === "not_durable" && wantsHistory(command)) {
        renewal.markEphemeral();
        followups.push(renewal);
      } else {
        this.refuse(renewal.pattern, error);
      }
    });
    groups.forEach((group, i) => {
      const outcome = outcomes[subscribed.length + i];
      if (outcome.status === "fulfilled") {
        group.joined(outcome.value);
        return;
      }
      const error = outcome.reason;
      if (!(error instanceof ClientError)) throw error;
      if (TRANSIENT_RESTORE_CODES.has(error.code)) {
        throw new RestoreFailed(`the node could not rejoin ${group.group}: ${error.message} (${error.code})`);
      }
      this.memberships = this.memberships.filter((g) => g !== group);
      group.end(error);
    });
    if (followups.length === 0) return;
    const retries = followups.map((renewal) => renewal.command());
    const results = await Promise.allSettled(retries.map(([command]) => link.request(command, deadline)));
    followups.forEach((renewal, i) => {
      const outcome = results[i];
      if (outcome.status === "fulfilled") renewal.apply(outcome.value, retries[i][1]);
      else if (outcome.reason instanceof ClientError) this.refuse(renewal.pattern, outcome.reason);
      else throw outcome.reason;
    });
  }

  /**
   * The node refused to renew `pattern`: reconnect later for a transient reason, else end its
   * subscriptions with the node's error.
   * @param {string} pattern
   * @param {ClientError} error
   */
  refuse(pattern, error) {
    if (TRANSIENT_RESTORE_CODES.has(error.code)) {
      throw new RestoreFailed(`the node could not restore ${pattern}: ${error.message} (${error.code})`);
    }
    for (const sub of this.subs.filter((s) => s.pattern === pattern)) {
      this.discard(sub);
      sub.end(renew(error));
    }
  }

  /**
   * Send every unacked publish not yet sent on `link`, oldest first.
   * @param {Link} link
   */
  resendInflight(link) {
    for (const pending of this.inflight) {
      if (pending.generation !== link.generation && !pending.deferred.settled) this.transmit(link, pending);
    }
  }

  /** Own the connection: keep it alive, notice its end, reconnect or fail the client. */
  async supervise() {
    try {
      for (;;) {
        const link = this.link;
        if (link === null || this.closing) return;
        await this.watch(link);
        link.shutdown();
        if (this.link === link) this.link = null;
        if (this.closing) return;
        const code = link.closeCode;
        if (!this.reconnect || !shouldReconnect(code)) {
          const reason = link.closeReason ? `: ${link.closeReason}` : "";
          this.terminate(new ConnectionClosed(`the connection closed (code ${code}${reason})`, code));
          return;
        }
        this.setState("reconnecting");
        this.signal();
        if (!(await this.reconnectLoop(code))) return;
      }
    } catch (error) {
      this.logger.warn("agentcast: the client supervisor failed", error);
      this.terminate(new ConnectionClosed(`the client failed: ${error}`));
    }
  }

  /**
   * Wait for `link` to close; send a keepalive `ping` (without id: no success reply) when it
   * has sent nothing for the heartbeat interval.
   * @param {Link} link
   */
  async watch(link) {
    while (link.alive) {
      const intervalMs = link.heartbeatInterval * 1000;
      const wait = link.lastSend + intervalMs - now();
      await sleep(wait, link.closed.promise);
      if (!link.alive) return;
      if (now() - link.lastSend >= intervalMs) {
        try {
          link.send({ cmd: "ping" });
        } catch (error) {
          if (!(error instanceof LinkLost)) throw error;
        }
      }
    }
  }

  /**
   * Try to reopen the session; `false` if the client ended instead.
   * @param {number | null} code
   */
  async reconnectLoop(code) {
    const backoff = this.backoff;
    backoff.reset();
    /** @type {unknown} */
    let lastError = null;
    for (let attempt = 1; attempt <= this.maxReconnectAttempts; attempt++) {
      await sleep(backoff.nextDelay() * 1000, this.closeSignal.promise);
      if (this.closing) return false;
      this.emit("reconnect", { attempt });
      try {
        await this.open();
      } catch (error) {
        if (this.closing) return false;
        if (error instanceof ClientError) {
          this.terminate(
            new ConnectionClosed(`the node refused the session on reconnect: ${error.message} (${error.code})`, code),
          );
          return false;
        }
        lastError = error;
        this.logger.info(`agentcast: reconnect attempt ${attempt} failed: ${error}`);
        continue;
      }
      this.reconnects += 1;
      return true;
    }
    this.terminate(
      new ConnectionClosed(`gave up reconnecting after ${this.maxReconnectAttempts} attempts: ${lastError}`, code),
    );
    return false;
  }

  /**
   * End the client: fail waiting publishes and subscriptions, wake every waiter.
   * @param {ConnectionClosed} error
   * @param {boolean} [graceful]
   */
  terminate(error, graceful = false) {
    if (this.failure !== null) return;
    this.failure = error;
    for (const pending of this.inflight) pending.deferred.reject(renew(error));
    const link = this.link;
    if (link !== null) link.shutdown();
    this.link = null;
    const subs = this.subs;
    const groups = this.memberships;
    this.subs = [];
    this.memberships = [];
    for (const sub of [...subs, ...groups]) {
      if (graceful) sub.end(null, renew(error));
      else sub.end(renew(error));
    }
    this.setState("closed");
    if (!graceful) this.emit("error", error);
    this.signal();
  }
}

/**
 * Create a client and connect it.
 * @param {string} url
 * @param {import("./agentcast").ClientOptions} [options]
 */
export async function connect(url, options) {
  const client = new Client(url, options);
  await client.connect();
  return client;
}
