// Subscribing and publishing, history, presence, and the errors the server answers.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HybridbusError, parseToken } from "../src/index.js";
import { connected, events, ids, more, needsServer, take, token, uid, unique, waitFor } from "./support.mjs";

test("a subscription gets every event published, once, in order, with its position", needsServer, async (t) => {
  const client = await connected(t);
  const topic = unique("order");
  const sub = client.subscribe(`${topic}/+`);
  const ready = await sub.ready;
  assert.equal(ready.recovered, true);
  assert.equal(sub.position, ready.position);
  // 60 publishes in one turn of the event loop: one frame, appended together, in order.
  const burst = events("o", 0, 60);
  const acks = await Promise.all(burst.map((ev, n) => client.publish(`${topic}/${n % 3}`, ev)));
  assert.deepEqual(acks.map((a) => a.duplicate), burst.map(() => false));
  const got = await take(sub, burst.length);
  assert.deepEqual(got.map(ids), burst.map(ids));
  for (const [n, d] of got.entries()) {
    assert.equal(d.topic, `${topic}/${n % 3}`);
    assert.equal(d.offset, Math.floor(n / 3) + 1); // gap-free per topic
    assert.equal(d.pattern, `${topic}/+`);
    assert.equal(d.token, acks[n].token); // the token after an event is its ack's
    assert.deepEqual(d.event.data, { n });
    assert.equal(d.event.specversion, "1.0");
    assert.equal(d.event.source, "/hybridbus-js");
  }
  assert.equal(sub.position, acks.at(-1).token);
  assert.deepEqual(await more(sub), []);
});

test("onEvent: deliveries as callbacks; unsubscribe stops them", needsServer, async (t) => {
  const client = await connected(t);
  const topic = unique("callback");
  const seen = [];
  const sub = client.subscribe(topic, { onEvent: (d) => seen.push(ids(d)) });
  await sub.ready;
  await client.publish(topic, { id: uid("c1"), type: "t" });
  await waitFor(() => seen.length === 1, 5000, "the event");
  await sub.unsubscribe();
  assert.equal(sub.ended, true);
  await client.publish(topic, { id: uid("c2"), type: "t" });
  const again = client.subscribe(topic); // the pattern is free again
  await again.ready;
  await client.publish(topic, { id: uid("c3"), type: "t" });
  assert.deepEqual((await take(again, 1)).map(ids), ["c3"]);
  assert.deepEqual(seen, ["c1"]);
});

test("since: a token resumes exactly after it; 'earliest' from the start; a filter applies", needsServer, async (t) => {
  const client = await connected(t);
  const topic = unique("since");
  const acks = [];
  for (const ev of events("s", 0, 5)) acks.push(await client.publish(topic, { ...ev, data: { n: ev.data.n, level: ev.data.n % 2 ? "error" : "info" } }));
  const after = client.subscribe(`${topic}/#`, { since: acks[1].token });
  assert.deepEqual((await take(after, 3)).map(ids), ["s-2", "s-3", "s-4"]);
  const all = client.subscribe(topic, { since: "earliest" });
  assert.deepEqual((await take(all, 5)).map(ids), ["s-0", "s-1", "s-2", "s-3", "s-4"]);
  assert.equal((await all.ready).recovered, true);
  const other = await connected(t); // one subscription per pattern and client
  const errors = other.subscribe(topic, { since: acks[0].token, filter: { level: "error" } });
  assert.deepEqual((await take(errors, 2)).map(ids), ["s-1", "s-3"]);
  assert.equal(errors.position, acks[3].token); // the token after the last event it let through
  for (const sub of [after, all]) assert.deepEqual(await more(sub, 100), []);
});

test("history: pages of retained events with the position to continue from", needsServer, async (t) => {
  const client = await connected(t);
  const topic = unique("history");
  const burst = events("h", 0, 7);
  const acks = await Promise.all(burst.map((ev) => client.publish(topic, ev)));
  const first = await client.history(topic, { limit: 5 });
  assert.deepEqual(first.events.map(ids), ["h-0", "h-1", "h-2", "h-3", "h-4"]);
  assert.equal(first.more, true);
  assert.equal(first.exact, true);
  assert.equal(first.events[0].topic, topic);
  assert.equal(first.events[4].offset, 5);
  const rest = await client.history(topic, { since: first.position });
  assert.deepEqual(rest.events.map(ids), ["h-5", "h-6"]);
  assert.equal(rest.more, false);
  assert.equal(rest.position, acks.at(-1).token);
  const since = await client.history(topic, { since: Date.now() / 1000 + 60, limit: 0 });
  assert.equal(since.events.length, 0);
  assert.ok(parseToken(since.position));
});

test("presence: members of a topic; a watching subscription sees joins and leaves", needsServer, async (t) => {
  const ann = await connected(t, { token: await token({ sub: "ann" }) });
  const bob = await connected(t, { token: await token({ sub: "bob" }) });
  const topic = unique("room");
  const changes = [];
  const watching = ann.subscribe(topic, { presence: true, onPresence: (m) => changes.push([m.type, m.info.user]) });
  await watching.ready;
  await waitFor(() => watching.members.size === 1, 5000, "ann's own membership");
  const bobs = bob.subscribe(topic);
  await bobs.ready;
  await waitFor(() => watching.members.size === 2, 5000, "bob's join");
  const members = await bob.presence(topic);
  assert.equal(members.count, 2);
  assert.deepEqual(members.clients.map((c) => c.user).sort(), ["ann", "bob"]);
  assert.ok(members.clients.some((c) => c.client === ann.info.client));
  await bobs.unsubscribe();
  await waitFor(() => watching.members.size === 1, 5000, "bob's leave");
  assert.deepEqual(changes.filter(([, user]) => user === "bob"), [["join", "bob"], ["leave", "bob"]]);
  const paged = await ann.presence(topic, { limit: 1 });
  assert.equal(paged.clients.length, 1);
});

test("errors carry the protocol's codes", needsServer, async (t) => {
  const client = await connected(t);
  const bad = client.subscribe("docs/++");
  await assert.rejects(bad.ready, (e) => e instanceof HybridbusError && e.code === 1003 && /INVALID_PATTERN/.test(e.message));
  await assert.rejects(bad.next(), (e) => e.code === 1003);
  await assert.rejects(client.publish("docs/+", { type: "t" }), (e) => e.code === 1002 && e.retriable === false);
  await assert.rejects(client.publish("docs/1", { type: "t", sequence: 7 }), (e) => e.code === 1001 && /sequence/.test(e.reason));
  await assert.rejects(client.history("docs/1", { since: "not a token" }), (e) => e.code === 1005 || e.code === 1012);
  const twice = unique("twice");
  await client.subscribe(twice).ready;
  await assert.rejects(client.subscribe(twice).ready, (e) => e.code === 1013);
  const reader = await connected(t, { token: await token({ sub: "rita", roles: "reader" }) });
  await assert.rejects(reader.publish("docs/1", { type: "t" }), (e) => {
    assert.ok(e instanceof HybridbusError);
    assert.equal(e.code, 1110);
    assert.equal(e.retriable, false);
    assert.match(e.message, /^1110 FORBIDDEN: /);
    return true;
  });
  await reader.subscribe(unique("read")).ready; // reading is allowed
  assert.equal(reader.state, "connected"); // a refused command leaves the connection as it was
});
