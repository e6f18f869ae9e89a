// Reconnect, resume and resend against a real node that is stopped and restarted.
import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import { ConnectionClosed, connect } from "../agentcast.js";
import { FAST, NodeProcess, take, waiter, within } from "./support.js";

describe("reconnects", () => {
  /** @type {NodeProcess} */
  let node;
  beforeEach(async () => {
    node = new NodeProcess({ durable: ["acme.*.log"] });
    await node.start();
  });
  afterEach(() => node.dispose());

  test("after a restart on the same port it resumes a durable topic with every seq exactly once", async () => {
    let tokens = 0;
    /** @type {string[]} */
    const states = [];
    const connected = waiter((/** @type {string} */ state) => state === "connected");
    /** @type {any[]} */
    const hellos = [];
    // An injected WebSocket implementation that records the hellos it carries.
    class RecordingSocket extends WebSocket {
      /** @param {string} data */
      send(data) {
        const message = JSON.parse(data);
        if (message.cmd === "hello") hellos.push(message);
        super.send(data);
      }
    }
    const client = await connect(node.wsUrl, {
      ...FAST,
      name: "reader",
      WebSocket: RecordingSocket,
      getToken: async () => `token-${++tokens}`,
    });
    const publisher = await connect(node.wsUrl, { ...FAST, reconnect: false });
    try {
      const sub = await client.subscribe("acme.run-1.log");
      const live = await client.subscribe("acme.run-1.chat");
      for (let i = 1; i <= 5; i++) await publisher.publish("acme.run-1.log", { i });
      assert.deepEqual((await take(sub, 5)).map((e) => e.seq), [1, 2, 3, 4, 5]);
      client.on("state", (state) => {
        states.push(state);
        connected.check(state);
      });
      await node.stop();
      await publisher.close();
      await node.start();
      // Published while the reader is away (it may or may not have reconnected yet).
      for (let i = 6; i <= 10; i++) {
        assert.equal((await node.httpPublish({ topic: "acme.run-1.log", payload: { i } })).status, 200);
      }
      await within(connected.promise, "the reconnect");
      const rest = await take(sub, 5);
      assert.deepEqual(rest.map((e) => e.seq), [6, 7, 8, 9, 10]);
      assert.deepEqual(rest.map((e) => /** @type {any} */ (e.payload).i), [6, 7, 8, 9, 10]);
      assert.equal(sub.recovered, true);
      assert.equal(sub.gaps, 0);
      // getToken runs before every attempt; each hello carries the token of its attempt.
      assert.equal(hellos.length, 2);
      assert.equal(hellos[0].token, "token-1");
      assert.equal(hellos[1].token, `token-${tokens}`);
      assert.deepEqual(Object.keys(hellos[1].resume), ["acme.run-1.log"]);
      assert.deepEqual(hellos[1].resume["acme.run-1.log"].seq, 5);
      assert.equal(hellos[1].client, "reader");
      assert.equal(client.reconnects, 1);
      assert.ok(states.includes("reconnecting"));
      // The wildcard-free ephemeral subscription was renewed live.
      const again = await connect(node.wsUrl, FAST);
      await again.publish("acme.run-1.chat", "after");
      assert.equal((await within(live.get(), "the live event")).payload, "after");
      await again.close();
      assert.equal(sub.pending, 0, "nothing more than each seq once");
    } finally {
      await client.close();
      await publisher.close();
    }
  });

  test("publishes in flight when the node is killed are resent and stored once each", async () => {
    const client = await connect(node.wsUrl, FAST);
    try {
      const total = 60;
      /** @type {Promise<import("../agentcast.js").PublishAck>[]} */
      const acks = [];
      for (let i = 0; i < total; i++) {
        acks.push(client.publish("acme.run-2.log", { i }));
        if (i === 20) {
          await acks[0];
          await node.kill();
          await node.start();
        }
      }
      const results = await within(Promise.all(acks), "every ack", 30000);
      assert.equal(results.length, total);
      const reader = await connect(node.wsUrl, FAST);
      const history = await reader.subscribe("acme.run-2.log", { last: 1000, dedupeWindow: 0 });
      const maxSeq = Math.max(...results.map((r) => r.seq));
      const events = await take(history, maxSeq);
      const seen = events.map((e) => /** @type {any} */ (e.payload).i);
      assert.deepEqual(
        [...seen].sort((a, b) => a - b),
        Array.from({ length: total }, (_, i) => i),
        "every publish is stored exactly once",
      );
      for (const result of results) {
        const stored = events.find((e) => e.seq === result.seq);
        assert.ok(stored, `seq ${result.seq} is in the history`);
        assert.equal(stored.id, result.id);
      }
      await reader.close();
    } finally {
      await client.close();
    }
  });

  test("it gives up after the reconnect budget and fails what waits", async () => {
    const client = await connect(node.wsUrl, { ...FAST, maxReconnectAttempts: 3 });
    const sub = await client.subscribe("acme.run-3.chat");
    const reconnects = waiter((/** @type {{attempt: number}} */ detail) => detail.attempt === 3);
    client.on("reconnect", reconnects.check);
    await node.stop();
    await within(reconnects.promise, "three attempts");
    await assert.rejects(within(sub.get(), "the end"), (error) => {
      assert.ok(error instanceof ConnectionClosed);
      assert.match(error.message, /gave up reconnecting after 3 attempts/);
      assert.equal(error.closeCode, 4000);
      return true;
    });
    await assert.rejects(client.publish("acme.run-3.chat", 1), ConnectionClosed);
    await client.close();
  });

  test("with reconnect off a shutdown code ends the client", async () => {
    const client = await connect(node.wsUrl, { ...FAST, reconnect: false });
    const sub = await client.subscribe("acme.run-4.chat");
    await node.stop();
    await assert.rejects(within(sub.get(), "the end"), { closeCode: 4000 });
    assert.equal(client.state, "closed");
    await client.close();
  });

  test("a command issued while the node is down waits for the reconnect", async () => {
    const client = await connect(node.wsUrl, FAST);
    try {
      const down = waiter((/** @type {string} */ state) => state === "reconnecting");
      client.on("state", down.check);
      await node.stop();
      await within(down.promise, "the drop");
      const ack = client.publish("acme.run-5.chat", "late");
      await node.start();
      assert.equal((await within(ack, "the ack")).seq, 1);
    } finally {
      await client.close();
    }
  });
});
