// Consumer groups through the JS client: deliveries, ack, nack, sharing, rejoin.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { ClientError, GroupSubscription, connect } from "../agentcast.js";
import { FAST, NodeProcess, take, waiter, within } from "./support.js";

describe("consumer groups", () => {
  const node = new NodeProcess({ durable: ["acme.*.jobs", "acme.dead-letter.>"] });
  before(() => node.start());
  after(() => node.dispose());

  test("a member gets each job with its attempt, and an acked job is not redelivered", async () => {
    const client = await connect(node.wsUrl, FAST);
    try {
      const group = await client.joinGroup("acme.run-1.jobs", "coders", { ackTimeout: 30 });
      assert.ok(group instanceof GroupSubscription);
      assert.deepEqual(group.info, { floor: 0, ackTimeout: 30, maxDeliver: 5, maxInFlight: 16 });
      assert.deepEqual(client.groups, [group]);
      for (let i = 1; i <= 3; i++) await client.publish("acme.run-1.jobs", { job: i });
      const deliveries = await take(group, 3);
      assert.deepEqual(deliveries.map((d) => d.seq), [1, 2, 3]);
      assert.deepEqual(deliveries.map((d) => d.attempt), [1, 1, 1]);
      for (const delivery of deliveries) assert.equal(await delivery.ack(), true);
      assert.equal(await deliveries[0].ack(), false, "a delivery is settled once");
      assert.equal(group.pending, 0);
      assert.equal(group.received, 3);
    } finally {
      await client.close();
    }
  });

  test("a nacked job comes back as the next attempt, then dead-letters after max_deliver", async () => {
    const client = await connect(node.wsUrl, FAST);
    try {
      const dead = await client.subscribe("acme.dead-letter.testers");
      const group = await client.joinGroup("acme.run-2.jobs", "testers", { maxDeliver: 2 });
      await client.publish("acme.run-2.jobs", { job: "flaky" });
      const first = await within(group.get(), "the first attempt");
      assert.equal(first.attempt, 1);
      assert.equal(await first.nack({ reason: "try again" }), true);
      const second = await within(group.get(), "the second attempt");
      assert.equal(second.attempt, 2);
      assert.equal(second.envelope.id, first.envelope.id);
      await second.nack({ reason: "still failing" });
      const letter = await within(dead.get(), "the dead letter");
      assert.equal(/** @type {any} */ (letter.payload).seq, first.seq);
      assert.equal(letter.causation_id, first.envelope.id);
      assert.equal(letter.headers.reason, "nack: still failing");
    } finally {
      await client.close();
    }
  });

  test("members of a group get every job once between them, through callbacks", async () => {
    const a = await connect(node.wsUrl, { ...FAST, name: "a" });
    const b = await connect(node.wsUrl, { ...FAST, name: "b" });
    try {
      /** @type {number[]} */
      const seen = [];
      const all = waiter((/** @type {number} */ n) => n === 20);
      /** @param {import("../agentcast.js").GroupDelivery} delivery */
      const handle = (delivery) => {
        seen.push(delivery.seq);
        delivery.ack().then(() => all.check(seen.length));
      };
      await a.subscribe("acme.run-3.jobs", { group: "workers", maxInFlight: 1, onEvent: handle });
      await b.subscribe("acme.run-3.jobs", { group: "workers", maxInFlight: 1, onEvent: handle });
      for (let i = 0; i < 20; i++) await a.publish("acme.run-3.jobs", { i });
      await within(all.promise, "every job acked");
      assert.deepEqual([...seen].sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => i + 1));
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("leaving the group hands an unacked job to another member", async () => {
    const a = await connect(node.wsUrl, FAST);
    const b = await connect(node.wsUrl, FAST);
    try {
      const first = await a.subscribe("acme.run-4.jobs", { group: "pair" });
      await a.publish("acme.run-4.jobs", "job");
      const held = await within(first.get(), "the job");
      const second = await b.subscribe("acme.run-4.jobs", { group: "pair" });
      await first.unsubscribe();
      const moved = await within(second.get(), "the redelivery");
      assert.equal(moved.envelope.id, held.envelope.id);
      assert.equal(moved.attempt, 2);
      assert.equal(await moved.ack(), true);
      assert.equal(first.active, false);
      assert.equal(await held.ack(), false, "the membership ended: the ack is stale");
      assert.equal(first.staleAcks, 1);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test("a group on an ephemeral topic is refused with not_durable; a second join is an error", async () => {
    const client = await connect(node.wsUrl, FAST);
    try {
      await assert.rejects(client.subscribe("acme.run-5.chat", { group: "g" }), (error) => {
        assert.ok(error instanceof ClientError);
        assert.equal(error.code, "not_durable");
        return true;
      });
      assert.deepEqual(client.groups, []);
      await client.joinGroup("acme.run-5.jobs", "g");
      await assert.rejects(client.joinGroup("acme.run-5.jobs", "g"), /already a member/);
    } finally {
      await client.close();
    }
  });

  test("a member rejoins its group after a reconnect and gets the unacked job again", async () => {
    const client = await connect(node.wsUrl, FAST);
    try {
      const group = await client.subscribe("acme.run-6.jobs", { group: "survivors" });
      await client.publish("acme.run-6.jobs", "job");
      const held = await within(group.get(), "the job");
      const back = waiter((/** @type {string} */ state) => state === "connected");
      client.on("state", back.check);
      await node.stop();
      await node.start();
      await within(back.promise, "the reconnect");
      const again = await within(group.get(), "the redelivery");
      assert.equal(again.envelope.id, held.envelope.id);
      assert.equal(held.current, false);
      assert.equal(await held.ack(), false, "acks belong to the connection the delivery came on");
      assert.equal(await again.ack(), true);
      assert.equal(client.reconnects, 1);
      assert.equal(group.rejoins, 1);
    } finally {
      await client.close();
    }
  });
});
