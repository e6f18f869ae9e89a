// Protocol semantics against a scripted node behind an injected WebSocket implementation,
// and the pure helpers.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  Backoff,
  Client,
  ClientError,
  CommandTimeout,
  ConnectionClosed,
  IdWindow,
  isPattern,
  matches,
  shouldReconnect,
} from "../agentcast.js";
import { FakeNode, envelope } from "./fake.js";
import { take, waiter, within } from "./support.js";

const FAST = { backoffInitial: 0.001, backoffMax: 0.005, maxReconnectAttempts: 50 };

/**
 * @param {FakeNode} node
 * @param {import("../agentcast.js").ClientOptions} [options]
 */
async function open(node, options = {}) {
  const client = new Client("ws://fake/v1/ws", { ...FAST, WebSocket: node.WebSocket, ...options });
  await client.connect();
  return client;
}

/** @param {Client} client */
function nextState(client, /** @type {string} */ wanted) {
  const w = waiter((/** @type {string} */ state) => state === wanted);
  const off = client.on("state", w.check);
  return w.promise.finally(off);
}

describe("pure helpers", () => {
  test("shouldReconnect follows the close-code ranges", () => {
    for (const code of [null, undefined, 1001, 1006, 1011, 1012, 1013, 4000, 4001, 4002, 4003, 4499]) {
      assert.equal(shouldReconnect(code), true, String(code));
    }
    for (const code of [1000, 1002, 1008, 1009, 4500, 4501, 4999, 3000]) {
      assert.equal(shouldReconnect(code), false, String(code));
    }
  });

  test("matches handles exact topics, * and >", () => {
    assert.ok(matches("acme.run.chat", "acme.run.chat"));
    assert.ok(matches("acme.*.chat", "acme.run.chat"));
    assert.ok(!matches("acme.*.chat", "acme.run.x.chat"));
    assert.ok(matches("acme.>", "acme.run.chat"));
    assert.ok(matches("acme.>", "acme.run"));
    assert.ok(!matches("acme.>", "acme"));
    assert.ok(!matches("acme.run", "acme.run.chat"));
    assert.ok(!matches("acme.run.chat", "acme.run"));
    assert.ok(matches("*.*", "a.b"));
    assert.ok(isPattern("acme.*") && isPattern("acme.>") && !isPattern("acme.run"));
  });

  test("backoff doubles up to the maximum with full jitter", () => {
    const top = new Backoff(0.1, 1, () => 0.999999);
    const ceilings = Array.from({ length: 6 }, () => top.nextDelay());
    assert.deepEqual(
      ceilings.map((d) => Math.round(d * 1000) / 1000),
      [0.1, 0.2, 0.4, 0.8, 1, 1],
    );
    const bottom = new Backoff(0.1, 1, () => 0);
    assert.equal(bottom.nextDelay(), 0);
    const half = new Backoff(0.1, 1, () => 0.5);
    half.nextDelay();
    assert.equal(half.nextDelay(), 0.1);
    half.reset();
    assert.equal(half.ceiling(), 0.1);
  });

  test("the id window is bounded and forgets oldest first", () => {
    const window = new IdWindow(2);
    assert.ok(window.add("a"));
    assert.ok(!window.add("a"));
    assert.ok(window.add("b"));
    assert.ok(window.add("c"));
    assert.equal(window.length, 2);
    assert.ok(!window.has("a"));
    assert.ok(window.add("a"), "forgotten past the window");
    const off = new IdWindow(0);
    assert.ok(off.add("x") && off.add("x"));
  });
});

describe("against a scripted node", () => {
  test("an overloaded publish is retried with the same idempotency key", async () => {
    const node = new FakeNode();
    let refusals = 2;
    node.handler = (socket, message) => {
      if (message.cmd === "publish" && refusals > 0) {
        refusals -= 1;
        socket.refuse(message.id, refusals ? "overloaded" : "unavailable");
      } else node.answer(socket, message);
    };
    const client = await open(node);
    try {
      const ack = await client.publish("acme.run.log", 1, { idempotencyKey: "mine" });
      assert.equal(ack.seq, 1);
      const sent = node.commands("publish");
      assert.equal(sent.length, 3);
      assert.deepEqual(new Set(sent.map((m) => m.idempotency_key)), new Set(["mine"]));
      assert.equal(client.publishRetries, 2);
    } finally {
      await client.close();
    }
  });

  test("a publish still overloaded at the deadline rejects with the node's code", async () => {
    const node = new FakeNode();
    node.handler = (socket, message) => {
      if (message.cmd === "publish") socket.refuse(message.id, "overloaded");
      else node.answer(socket, message);
    };
    // Retry delays of 0.15 s then 0.3 s: the second would pass the 0.4 s deadline.
    const client = await open(node, { ackTimeout: 0.4, backoffInitial: 0.15, backoffMax: 10, random: () => 0.999 });
    try {
      await assert.rejects(client.publish("acme.run.log", 1), (error) => {
        assert.ok(error instanceof ClientError);
        assert.equal(error.code, "overloaded");
        return true;
      });
      assert.equal(node.commands("publish").length, 2);
      assert.equal(client.publishRetries, 1);
    } finally {
      await client.close();
    }
  });

  test("other refusals are not retried", async () => {
    const node = new FakeNode();
    node.handler = (socket, message) => {
      if (message.cmd === "publish") socket.refuse(message.id, "payload_too_large");
      else node.answer(socket, message);
    };
    const client = await open(node);
    try {
      await assert.rejects(client.publish("acme.run.log", 1), { code: "payload_too_large" });
      assert.equal(node.commands("publish").length, 1);
    } finally {
      await client.close();
    }
  });

  test("in-flight publishes are resent in their original order with their keys", async () => {
    const node = new FakeNode();
    node.handler = (socket, message) => {
      if (message.cmd === "publish" && socket === node.sockets[0]) return; // never answered
      node.answer(socket, message);
    };
    const client = await open(node);
    try {
      const acks = [1, 2, 3].map((i) => client.publish("acme.run.chat", i, { idempotencyKey: `k${i}` }));
      await node.waitFor(() => node.commands("publish").length === 3, "three publishes");
      const back = nextState(client, "connected");
      node.socket.drop(1006);
      await within(back, "the reconnect");
      const results = await within(Promise.all(acks), "the acks");
      assert.deepEqual(results.map((r) => r.seq), [1, 2, 3]);
      const resent = node.sockets[1].received.filter((m) => m.cmd === "publish");
      assert.deepEqual(resent.map((m) => m.idempotency_key), ["k1", "k2", "k3"]);
      assert.deepEqual(resent.map((m) => m.payload), [1, 2, 3]);
    } finally {
      await client.close();
    }
  });

  test("a reconnect hello resumes exact topics from their positions and renews the rest", async () => {
    const node = new FakeNode();
    const client = await open(node);
    try {
      const log = await client.subscribe("acme.run.log");
      const all = await client.subscribe("acme.>");
      const tuned = await client.subscribe("acme.run.tuned", { policy: "drop_oldest" });
      node.socket.push({ type: "event", event: envelope("a", "acme.run.log", 7) });
      node.socket.push({ type: "event", event: envelope("b", "acme.run.tuned", 3) });
      await take(log, 1);
      await take(tuned, 1);
      node.handler = (socket, message) => {
        if (message.cmd === "hello") {
          socket.ok(message.id, {
            connection: "c2",
            node: "fake",
            heartbeat_interval: 25,
            resume: { "acme.run.log": { topic: "acme.run.log", recovered: true, epoch: "ep", seq: 9 } },
          });
        } else if (message.cmd === "subscribe" && message.topic === "acme.run.tuned") {
          socket.ok(message.id, { topic: message.topic, recovered: false, epoch: "ep2", seq: 40 });
        } else node.answer(socket, message);
      };
      const back = nextState(client, "connected");
      node.socket.drop(4001);
      await within(back, "the reconnect");
      const second = node.sockets[1].received;
      assert.equal(second[0].cmd, "hello");
      assert.deepEqual(second[0].resume, { "acme.run.log": { epoch: "ep", seq: 7 } });
      const renewals = second.filter((m) => m.cmd === "subscribe");
      assert.deepEqual(
        renewals.map((m) => [m.topic, m.since ?? null, m.policy ?? null]),
        [
          ["acme.>", null, null],
          ["acme.run.tuned", { epoch: "ep", seq: 3 }, "drop_oldest"],
        ],
      );
      assert.equal(log.recovered, true);
      assert.equal(tuned.recovered, false);
      assert.equal(tuned.gaps, 1);
      assert.deepEqual(tuned.position, { epoch: "ep2", seq: 40 });
      assert.equal(all.active, true);
    } finally {
      await client.close();
    }
  });

  test("a renewal the node refuses ends that subscription with the node's error", async () => {
    const node = new FakeNode();
    const client = await open(node);
    try {
      const log = await client.subscribe("acme.run.log");
      const chat = await client.subscribe("acme.run.chat");
      node.socket.push({ type: "event", event: envelope("a", "acme.run.log", 1) });
      await take(log, 1);
      node.handler = (socket, message) => {
        if (message.cmd === "hello") {
          socket.ok(message.id, {
            connection: "c2",
            node: "fake",
            resume: { "acme.run.log": { error: { code: "position_lost", message: "gone" } } },
          });
        } else node.answer(socket, message);
      };
      node.socket.drop(4000);
      await assert.rejects(within(log.get(), "the refusal"), (error) => {
        assert.ok(error instanceof ClientError);
        assert.equal(error.code, "position_lost");
        return true;
      });
      assert.equal(chat.active, true);
      assert.deepEqual(client.subscriptions, [chat]);
    } finally {
      await client.close();
    }
  });

  test("a topic the node calls not durable on resume is renewed live", async () => {
    const node = new FakeNode();
    const client = await open(node);
    try {
      const sub = await client.subscribe("acme.run.chat");
      node.socket.push({ type: "event", event: envelope("a", "acme.run.chat", 4) });
      await take(sub, 1);
      node.handler = (socket, message) => {
        if (message.cmd === "hello") {
          socket.ok(message.id, {
            connection: "c2",
            node: "fake",
            resume: { "acme.run.chat": { error: { code: "not_durable", message: "no history" } } },
          });
        } else node.answer(socket, message);
      };
      const back = nextState(client, "connected");
      node.socket.drop(4000);
      await within(back, "the reconnect");
      const renewal = node.sockets[1].received.filter((m) => m.cmd === "subscribe");
      assert.deepEqual(renewal.map((m) => [m.topic, m.since ?? null]), [["acme.run.chat", null]]);
      assert.equal(sub.durable, false);
      assert.equal(sub.active, true);
    } finally {
      await client.close();
    }
  });

  test("events are deduplicated by envelope id within a bounded window", async () => {
    const node = new FakeNode();
    const client = await open(node);
    try {
      const sub = await client.subscribe("acme.>", { dedupeWindow: 2 });
      for (const id of ["a", "b", "a", "b", "c", "a"]) {
        node.socket.push({ type: "event", event: envelope(id, "acme.run.chat", 1) });
      }
      const ids = (await take(sub, 4)).map((e) => e.id);
      assert.deepEqual(ids, ["a", "b", "c", "a"], "'a' is forgotten once 'b' and 'c' came after it");
      assert.equal(sub.duplicates, 2);
    } finally {
      await client.close();
    }
  });

  test("group deliveries go to the group member only, not to plain subscriptions", async () => {
    const node = new FakeNode();
    const client = await open(node);
    try {
      const plain = await client.subscribe("acme.>");
      const group = await client.subscribe("acme.run.jobs", { group: "g", maxInFlight: 2 });
      assert.equal(group.constructor.name, "GroupSubscription");
      const join = node.commands("subscribe").find((m) => m.group === "g");
      assert.equal(join.max_in_flight, 2);
      const event = envelope("j", "acme.run.jobs", 5);
      node.socket.push({ type: "event", group: "g", attempt: 3, event });
      node.socket.push({ type: "event", group: "g", attempt: 4, event });
      node.socket.push({ type: "event", event: envelope("p", "acme.run.jobs", 5) });
      const deliveries = await take(group, 2);
      assert.deepEqual(deliveries.map((d) => d.attempt), [3, 4], "redeliveries are not deduplicated");
      assert.deepEqual((await take(plain, 1)).map((e) => e.id), ["p"]);
      await assert.rejects(deliveries[1].nack({ delay: -1 }), RangeError);
      assert.equal(deliveries[1].settled, false);
      assert.equal(await deliveries[1].nack({ delay: 2, reason: "later" }), true);
      const nack = node.commands("nack")[0];
      assert.deepEqual(
        { topic: nack.topic, group: nack.group, seq: nack.seq, delay: nack.delay, reason: nack.reason },
        { topic: "acme.run.jobs", group: "g", seq: 5, delay: 2, reason: "later" },
      );
    } finally {
      await client.close();
    }
  });

  test("a quiet client sends keepalive pings at the node's heartbeat interval", async () => {
    const node = new FakeNode();
    node.heartbeat = 0.02;
    const client = await open(node);
    try {
      await node.waitFor(() => node.commands("ping").length >= 2, "two keepalive pings");
      assert.ok(node.commands("ping").every((m) => m.id === undefined), "pings carry no id");
    } finally {
      await client.close();
    }
  });

  test("a hello refused on connect rejects; refused on reconnect ends the client", async () => {
    const refusing = new FakeNode();
    refusing.handler = (socket, message) => socket.refuse(message.id, "unauthorized");
    const client = new Client("ws://fake/v1/ws", { ...FAST, WebSocket: refusing.WebSocket });
    await assert.rejects(client.connect(), { code: "unauthorized" });

    const node = new FakeNode();
    const second = await open(node);
    const sub = await second.subscribe("acme.run.chat");
    node.handler = (socket, message) => {
      if (message.cmd === "hello") socket.refuse(message.id, "unauthorized");
      else node.answer(socket, message);
    };
    node.socket.drop(4000);
    await assert.rejects(within(sub.get(), "the end"), (error) => {
      assert.ok(error instanceof ConnectionClosed);
      assert.match(error.message, /refused the session on reconnect/);
      return true;
    });
    await second.close();
  });

  test("connection attempts that fail are retried with backoff", async () => {
    const node = new FakeNode();
    const client = await open(node);
    try {
      /** @type {number[]} */
      const attempts = [];
      client.on("reconnect", (detail) => attempts.push(detail.attempt));
      node.refuseConnections = 3;
      const back = nextState(client, "connected");
      node.socket.drop(1006);
      await within(back, "the reconnect");
      assert.deepEqual(attempts, [1, 2, 3, 4]);
      assert.equal(client.reconnects, 1);
    } finally {
      await client.close();
    }
  });

  test("a hello without reply times out", async () => {
    const node = new FakeNode();
    node.handler = () => {};
    const client = new Client("ws://fake/v1/ws", { ...FAST, WebSocket: node.WebSocket, ackTimeout: 0.05 });
    await assert.rejects(client.connect(), CommandTimeout);
  });

  test("a full local buffer drops the oldest event", async () => {
    const node = new FakeNode();
    const client = await open(node);
    try {
      const sub = await client.subscribe("acme.>", { bufferSize: 2 });
      const last = waiter((/** @type {any} */ e) => e.id === "c");
      await client.subscribe("acme.>", { onEvent: last.check });
      for (const id of ["a", "b", "c"]) node.socket.push({ type: "event", event: envelope(id, "acme.x", 1) });
      await within(last.promise, "the third event");
      assert.equal(sub.dropped, 1);
      assert.deepEqual((await take(sub, 2)).map((e) => e.id), ["b", "c"]);
    } finally {
      await client.close();
    }
  });

  test("the lamport clock moves past every received value and is sent with publishes", async () => {
    const node = new FakeNode();
    const client = await open(node);
    try {
      const sub = await client.subscribe("acme.>");
      node.socket.push({ type: "event", event: { ...envelope("a", "acme.x", 1), lamport: 41 } });
      await take(sub, 1);
      assert.equal(client.lamport, 41);
      await client.publish("acme.x", 1);
      assert.equal(node.commands("publish")[0].lamport, 41);
    } finally {
      await client.close();
    }
  });
});
