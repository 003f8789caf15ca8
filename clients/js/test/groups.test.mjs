// Consumer groups: a member receives, acks, nacks, terms; after a drop it rejoins as itself.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HybridbusError } from "../src/index.js";
import { PROXY_URL, connected, control, events, ids, more, needsServer, take, uid, unique, waitFor } from "./support.mjs";

test("a member acks what it handled; a nack comes back as the next attempt; term ends it", needsServer, async (t) => {
  const client = await connected(t);
  const topic = unique("billing");
  const name = topic.replaceAll("/", "-");
  const g = await client.group(name, `${topic}/#`, { ack_wait: 10, ordered: false });
  assert.equal(g.pattern, `${topic}/#`);
  assert.equal(typeof g.member, "string");
  for (const ev of events("g", 0, 3)) await client.publish(`${topic}/1`, ev);
  const got = await take(g, 3);
  assert.deepEqual(got.map(ids).sort(), ["g-0", "g-1", "g-2"]);
  const byId = Object.fromEntries(got.map((d) => [ids(d), d]));
  assert.equal(byId["g-0"].attempt, 1);
  await Promise.all([byId["g-0"].ack(), byId["g-1"].ack()]); // one ack command
  await byId["g-2"].nack({ delay: 0, error: "try again" });
  const [again] = await take(g, 1);
  assert.equal(ids(again), "g-2");
  assert.equal(again.attempt, 2);
  assert.equal(again.dedupe, byId["g-2"].dedupe);
  await again.extend();
  await again.term("malformed");
  await assert.rejects(again.nack(), (e) => e instanceof HybridbusError && e.code === 1403); // DELIVERY_GONE
  await byId["g-0"].ack(); // acking twice is harmless
  assert.deepEqual(await more(g, 300), []);
  await g.leave();
  assert.equal(g.ended, true);
});

test("for await over a group, and the errors of a join", needsServer, async (t) => {
  const client = await connected(t);
  const topic = unique("loop");
  const name = topic.replaceAll("/", "-");
  const g = await client.group(name, topic);
  await client.publish(topic, { id: uid("l-1"), type: "t" });
  for await (const d of g) {
    assert.equal(ids(d), "l-1");
    await d.ack();
    break; // leaves the group
  }
  assert.equal(g.ended, true);
  await assert.rejects(client.group(name, `${topic}/other`), (e) => e.code === 1402); // GROUP_CONFLICT
  await assert.rejects(client.group(`${name}-none`), (e) => e.code === 1401); // UNKNOWN_GROUP
});

test("after a drop the member rejoins under its name; acks of what it held still count", needsServer, async (t) => {
  const client = await connected(t, {}, PROXY_URL);
  const publisher = await connected(t);
  const topic = unique("rejoin");
  const name = topic.replaceAll("/", "-");
  const g = await client.group(name, topic, { ack_wait: 30 });
  const member = g.member;
  await publisher.publish(topic, { id: uid("j-1"), type: "t" });
  const [held] = await take(g, 1);
  await control("hold");
  await waitFor(() => client.state === "reconnecting", 5000, "the drop");
  const acking = held.ack(); // sent once the client is back
  await control("resume");
  await acking;
  assert.equal(g.member, member);
  await publisher.publish(topic, { id: uid("j-2"), type: "t" });
  const [next] = await take(g, 1);
  assert.equal(ids(next), "j-2"); // j-1 was acked: never again
  await next.ack();
  assert.deepEqual(await more(g, 300), []);
});
