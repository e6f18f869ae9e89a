// The JS client against a real node: publish with ack, subscriptions, refusals, close.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Client, ClientError, ConnectionClosed, connect } from "../agentcast.js";
import { FAST, NodeProcess, take, within } from "./support.js";

describe("a client on a live node", () => {
  const node = new NodeProcess({ durable: ["acme.*.log"] });
  before(() => node.start());
  after(() => node.dispose());

  /** @param {import("../agentcast.js").ClientOptions} [options] */
  const open = (options = {}) => connect(node.wsUrl, { ...FAST, ...options });

  test("publish resolves with the position and the event carries every field", async () => {
    const client = await open({ name: "planner" });
    try {
      const sub = await client.subscribe("acme.run-1.chat");
      const ack = await client.publish(
        "acme.run-1.chat",
        { text: "hi" },
        { headers: { key: "plan" }, correlationId: "run-1", causationId: "cause-1" },
      );
      assert.equal(ack.topic, "acme.run-1.chat");
      assert.equal(ack.seq, 1);
      assert.equal(ack.duplicate, false);
      assert.equal(typeof ack.epoch, "string");
      const event = await within(sub.get(), "the event");
      assert.equal(event.id, ack.id);
      assert.equal(event.seq, ack.seq);
      assert.equal(event.epoch, ack.epoch);
      assert.equal(event.source, "ac://client/planner");
      assert.equal(event.correlation_id, "run-1");
      assert.equal(event.causation_id, "cause-1");
      assert.deepEqual(event.headers, { key: "plan" });
      assert.deepEqual(event.payload, { text: "hi" });
      assert.ok(client.lamport >= event.lamport);
      assert.ok(client.connectionId);
      assert.ok(client.nodeId);
    } finally {
      await client.close();
    }
  });

  test("exact and wildcard subscriptions get events in seq order, by iterator and callback", async () => {
    const client = await open();
    try {
      const exact = await client.subscribe("acme.run-2.chat");
      const star = await client.subscribe("acme.*.chat");
      /** @type {number[]} */
      const called = [];
      let allCalled = () => {};
      const done = new Promise((resolve) => {
        allCalled = () => resolve(undefined);
      });
      await client.subscribe("acme.run-2.>", {
        onEvent: (event) => {
          called.push(event.seq);
          if (called.length === 5) allCalled();
        },
      });
      for (let i = 0; i < 5; i++) await client.publish("acme.run-2.chat", { i });
      await client.publish("acme.run-3.other", "not matched by exact or star");
      assert.deepEqual((await take(exact, 5)).map((e) => e.seq), [1, 2, 3, 4, 5]);
      assert.deepEqual((await take(star, 5)).map((e) => e.payload), [0, 1, 2, 3, 4].map((i) => ({ i })));
      await within(done, "the callback");
      assert.deepEqual(called, [1, 2, 3, 4, 5]);
      assert.equal(exact.pending, 0);
    } finally {
      await client.close();
    }
  });

  test("a refused publish or subscribe rejects with the node's code", async () => {
    const client = await open();
    try {
      await assert.rejects(client.publish("acme.*", 1), (error) => {
        assert.ok(error instanceof ClientError);
        assert.equal(error.code, "wildcard_publish");
        return true;
      });
      await assert.rejects(client.publish("acme..x", 1), { code: "invalid_topic" });
      await assert.rejects(client.subscribe("acme.run.chat", { last: 3 }), { code: "not_durable" });
      await assert.rejects(client.subscribe("acme.*.log", { last: 3 }), { code: "unsupported" });
      assert.equal(client.subscriptions.length, 0);
      assert.ok(client.connected, "an error reply never closes the connection");
    } finally {
      await client.close();
    }
  });

  test("the same idempotency key returns the original position", async () => {
    const client = await open();
    try {
      const first = await client.publish("acme.run-4.chat", 1, { idempotencyKey: "k-1" });
      const again = await client.publish("acme.run-4.chat", 2, { idempotencyKey: "k-1" });
      assert.equal(again.duplicate, true);
      assert.equal(again.seq, first.seq);
      assert.equal(again.id, first.id);
    } finally {
      await client.close();
    }
  });

  test("a publish without ack resolves with null and is delivered", async () => {
    const client = await open();
    try {
      const sub = await client.subscribe("acme.run-5.chat");
      assert.equal(await client.publish("acme.run-5.chat", "fire", { ack: false }), null);
      assert.equal((await within(sub.get(), "the event")).payload, "fire");
    } finally {
      await client.close();
    }
  });

  test("a history subscribe replays the last events of a durable topic", async () => {
    const client = await open();
    try {
      for (let i = 1; i <= 5; i++) await client.publish("acme.run-6.log", { i });
      const sub = await client.subscribe("acme.run-6.log", { last: 3 });
      assert.equal(sub.recovered, true);
      assert.deepEqual((await take(sub, 3)).map((e) => e.seq), [3, 4, 5]);
      assert.equal(sub.position?.seq, 5);
      await client.publish("acme.run-6.log", { i: 6 });
      assert.equal((await within(sub.get(), "the live event")).seq, 6);
      const again = await client.subscribe("acme.run-6.log", { since: { epoch: sub.position?.epoch ?? "", seq: 4 } });
      assert.deepEqual((await take(again, 2)).map((e) => e.seq), [5, 6]);
    } finally {
      await client.close();
    }
  });

  test("unsubscribe ends the iteration and stops delivery", async () => {
    const client = await open();
    try {
      const sub = await client.subscribe("acme.run-7.chat");
      const other = await client.subscribe("acme.run-7.>");
      await client.publish("acme.run-7.chat", 1);
      await sub.unsubscribe();
      await client.publish("acme.run-7.chat", 2);
      assert.deepEqual((await take(other, 2)).map((e) => e.payload), [1, 2]);
      assert.deepEqual((await take(sub, 10)).map((e) => e.payload), [1], "the iterator ends after what it buffered");
      assert.equal(sub.active, false);
      await assert.rejects(sub.get(), { code: "not_subscribed" });
    } finally {
      await client.close();
    }
  });

  test("close ends iterators and refuses later commands with close code 1000", async () => {
    const client = await open();
    const sub = await client.subscribe("acme.run-8.chat");
    const iteration = take(sub, 1);
    await client.close();
    assert.deepEqual(await iteration, []);
    await assert.rejects(client.publish("acme.run-8.chat", 1), (error) => {
      assert.ok(error instanceof ConnectionClosed);
      assert.equal(error.closeCode, 1000);
      return true;
    });
    assert.equal(client.state, "closed");
    await client.close();
  });

  test("a close code that forbids reconnecting ends the client (binary frame: 4501)", async () => {
    const client = await open();
    const sub = await client.subscribe("acme.run-9.chat");
    /** @type {unknown[]} */
    const errors = [];
    client.on("error", (error) => errors.push(error));
    const link = /** @type {any} */ (client).link;
    link.ws.send(new Uint8Array([1, 2, 3]));
    await assert.rejects(within(sub.get(), "the end"), (error) => {
      assert.ok(error instanceof ConnectionClosed);
      assert.equal(error.closeCode, 4501);
      return true;
    });
    assert.equal(client.reconnects, 0);
    assert.equal(errors.length, 1);
    await assert.rejects(client.publish("acme.run-9.chat", 1), { closeCode: 4501 });
    await client.close();
  });

  test("commands before connect are refused, and connect twice is an error", async () => {
    const client = new Client(node.wsUrl);
    await assert.rejects(client.publish("acme.a", 1), /connect\(\) first/);
    await client.connect();
    await assert.rejects(client.connect(), /already called/);
    await client.close();
  });

  test("connecting to a port with no node rejects with ConnectionClosed", async () => {
    const client = new Client("ws://127.0.0.1:1/v1/ws", { connectTimeout: 5 });
    await assert.rejects(client.connect(), ConnectionClosed);
  });
});
