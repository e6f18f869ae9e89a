// Types of agentcast.js, the JavaScript client of agentcast (wire protocol v1).

export const PROTOCOL_VERSION: 1;
export const MAX_RESUME_TOPICS: number;
export const DEFAULT_DEDUPE_WINDOW: number;
export const DEFAULT_BUFFER_SIZE: number;
export const DEFAULT_MAX_RECONNECT_ATTEMPTS: number;
export const RETRYABLE_PUBLISH_CODES: ReadonlySet<string>;

/** A stream position: `seq` grows by one per publication within one `epoch`. */
export interface Position {
  epoch: string;
  seq: number;
}

/** Every event, as the node sends it (docs/protocol.md, "Envelope"). */
export interface Envelope<P = unknown> {
  id: string;
  topic: string;
  seq: number;
  epoch: string;
  time: string;
  source: string;
  correlation_id: string | null;
  causation_id: string | null;
  lamport: number;
  headers: Record<string, string>;
  payload: P;
}

/** The node accepted and sequenced a publication. */
export interface PublishAck {
  id: string;
  topic: string;
  seq: number;
  epoch: string;
  lamport: number;
  /** The idempotency key was already accepted: this is the original position. */
  duplicate: boolean;
}

export type Policy = "disconnect" | "drop_oldest" | "drop_newest" | "latest_per_key";

export type ClientState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

/** A WebSocket constructor with the browser's API (the global one, or the `ws` package's). */
export type WebSocketConstructor = new (url: string) => WebSocket;

export interface Logger {
  warn?: (...args: unknown[]) => void;
  info?: (...args: unknown[]) => void;
}

export interface ClientOptions {
  /** A name for this client; becomes the envelope's `source` (`ac://client/<name>`). */
  name?: string | null;
  /** Connection credential sent in `hello`. */
  token?: string | null;
  /** Called before every (re)connect; its result is sent in `hello` (wins over `token`). */
  getToken?: () => string | null | Promise<string | null>;
  /** Reconnect when the close code allows it (default true). */
  reconnect?: boolean;
  /** First reconnect delay ceiling, seconds (default 0.1). */
  backoffInitial?: number;
  /** Largest reconnect delay ceiling, seconds (default 5). */
  backoffMax?: number;
  /** Bounds every command from the call to its reply, reconnect waits included (seconds, default 10). */
  ackTimeout?: number;
  /** Bounds each WebSocket opening (seconds, default 10). */
  connectTimeout?: number;
  /** Connection attempts one outage may take (default 100). */
  maxReconnectAttempts?: number;
  /** Recent event ids each subscription remembers to drop duplicates (default 10000; 0: none). */
  dedupeWindow?: number;
  /** The WebSocket implementation (default: the global WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** Random numbers in [0, 1) for the backoff jitter (default Math.random). */
  random?: () => number;
  /** Where warnings go (default console.warn; info is silent). */
  logger?: Logger;
}

export interface PublishOptions {
  headers?: Record<string, string>;
  /** Default: a random key; give your own if you may retry the publish yourself. */
  idempotencyKey?: string;
  correlationId?: string;
  causationId?: string;
  /** Default true. False: resolve with null once written; no ack, no resend, at-most-once. */
  ack?: boolean;
}

/** Options of a consumer-group join; they apply when the join creates the group. */
export interface GroupOptions {
  /** Seconds before an unacked delivery is redelivered (node default 30). */
  ackTimeout?: number;
  /** Attempts before an event is dead-lettered (node default 5). */
  maxDeliver?: number;
  /** Unacked deliveries per member (node default 16). */
  maxInFlight?: number;
  /** Events sharing this header's value are never in flight together (default `key`). */
  keyHeader?: string;
  /** Default `<tenant>.dead-letter.<group>`. */
  deadLetterTopic?: string;
  /** Receive deliveries through this callback instead of the buffer. */
  onDelivery?: (delivery: GroupDelivery) => void;
}

/** The node's answer to a join: the ack floor and the group's settings in force. */
export interface GroupInfo {
  floor: number;
  ackTimeout: number;
  maxDeliver: number;
  maxInFlight: number;
}

export interface SubscribeOptions extends GroupOptions {
  policy?: Policy;
  keyHeader?: string;
  /** Durable exact topics: replay everything after this position. */
  since?: Position;
  /** Durable exact topics: replay the last N retained events first. */
  last?: number;
  /** Durable exact topics: replay events from this RFC 3339 time on. */
  sinceTime?: string;
  /** Local buffer bound; the oldest event is dropped when full (default 10000). */
  bufferSize?: number;
  dedupeWindow?: number;
  /** Receive events (or, with `group`, deliveries) through this callback instead of the buffer. */
  onEvent?: (item: any) => void;
  /** Join this consumer group on a durable exact topic (the same as `joinGroup`). */
  group?: string;
}

export class AgentcastError extends Error {
  constructor(message: string, code?: string);
  code: string;
}

/** The node refused a command; `code` is the node's error code. */
export class ClientError extends AgentcastError {
  constructor(message: string, code: string);
}

/** The connection closed and will not be reopened. */
export class ConnectionClosed extends AgentcastError {
  constructor(message: string, closeCode?: number | null);
  closeCode: number | null;
}

/** A command got no answer within `ackTimeout` (code `timeout`). */
export class CommandTimeout extends AgentcastError {
  constructor(message: string);
}

export function shouldReconnect(code: number | null | undefined): boolean;
export function isPattern(topic: string): boolean;
export function matches(pattern: string, topic: string): boolean;

export class Backoff {
  constructor(initial: number, maximum: number, uniform?: () => number);
  initial: number;
  maximum: number;
  attempt: number;
  ceiling(): number;
  nextDelay(): number;
  reset(): void;
}

export class IdWindow {
  constructor(size?: number);
  readonly size: number;
  readonly length: number;
  has(id: string): boolean;
  add(id: string): boolean;
}

declare class Stream<T> implements AsyncIterable<T> {
  readonly active: boolean;
  readonly pending: number;
  dropped: number;
  get(): Promise<T>;
  getNowait(): T | undefined;
  [Symbol.asyncIterator](): AsyncIterator<T>;
}

export class Subscription<P = unknown> extends Stream<Envelope<P>> {
  readonly pattern: string;
  readonly exact: boolean;
  duplicates: number;
  gaps: number;
  recovered: boolean | null;
  position: Position | null;
  durable: boolean | null;
  unsubscribe(): Promise<void>;
}

/** One delivery to this member of a consumer group; settle it once with ack or nack. */
export class GroupDelivery<P = unknown> {
  readonly envelope: Envelope<P>;
  /** 1 on first delivery. */
  readonly attempt: number;
  readonly group: string;
  readonly topic: string;
  readonly seq: number;
  /** Whether ack or nack was already called. */
  readonly settled: boolean;
  /** Whether the node may still hold this delivery for us (its connection is open). */
  readonly current: boolean;
  /** True once the node confirmed; false if nothing was sent (settled before, or stale). */
  ack(): Promise<boolean>;
  /** Redeliver after `delay` seconds (0-86400), or dead-letter with `reason` on the last attempt. */
  nack(options?: { delay?: number; reason?: string }): Promise<boolean>;
}

/** Membership in one consumer group of a durable topic. */
export class GroupSubscription<P = unknown> extends Stream<GroupDelivery<P>> {
  readonly topic: string;
  readonly group: string;
  info: GroupInfo | null;
  received: number;
  staleAcks: number;
  discarded: number;
  rejoins: number;
  leave(): Promise<void>;
  unsubscribe(): Promise<void>;
}

export class Client {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly name: string | null;
  readonly connected: boolean;
  readonly subscriptions: Subscription[];
  state: ClientState;
  connectionId: string | null;
  nodeId: string | null;
  lamport: number;
  reconnects: number;
  publishRetries: number;
  connect(): Promise<void>;
  close(): Promise<void>;
  publish(topic: string, payload?: unknown, options?: PublishOptions & { ack?: true }): Promise<PublishAck>;
  publish(topic: string, payload: unknown, options: PublishOptions & { ack: false }): Promise<null>;
  subscribe<P = unknown>(
    topic: string,
    options: SubscribeOptions & { group: string },
  ): Promise<GroupSubscription<P>>;
  subscribe<P = unknown>(pattern: string, options?: SubscribeOptions): Promise<Subscription<P>>;
  joinGroup<P = unknown>(topic: string, group: string, options?: GroupOptions): Promise<GroupSubscription<P>>;
  readonly groups: GroupSubscription[];
  ping(): Promise<string>;
  on(type: "state", listener: (state: ClientState) => void): () => void;
  on(type: "reconnect", listener: (detail: { attempt: number }) => void): () => void;
  on(type: "error", listener: (error: ConnectionClosed) => void): () => void;
}

export function connect(url: string, options?: ClientOptions): Promise<Client>;
