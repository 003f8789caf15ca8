// Exact recovery: a dropped connection and a restarted server lose nothing and repeat nothing;
// a publish whose answer was lost is sent again and stored once; the session continues.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/index.js";
import { FAST, PROXY_URL, TOKEN, URL_, connected, control, events, ids, more, needsServer, take, uid, unique, waitFor } from "./support.mjs";

test("a dropped connection: what was published meanwhile arrives once, in order", needsServer, async (t) => {
  const client = await connected(t, {}, PROXY_URL); // through the cuttable link
  const publisher = await connected(t); // straight to the server
  const topic = unique("drop");
  const states = [];
  client.on("state", (s) => states.push(s));
  const sub = client.subscribe(`${topic}/+`);
  await sub.ready;
  const before = events("d", 0, 10);
  for (const [n, ev] of before.entries()) await publisher.publish(`${topic}/${n % 2}`, ev);
  assert.deepEqual((await take(sub, 10)).map(ids), before.map(ids));
  await control("hold"); // the network is gone, and stays gone for now
  await waitFor(() => client.state === "reconnecting", 5000, "the client seeing the drop");
  const meanwhile = events("d", 10, 40);
  await Promise.all(meanwhile.map((ev, n) => publisher.publish(`${topic}/${n % 3}`, ev)));
  await control("resume");
  await waitFor(() => client.state === "connected", 10_000, "the reconnect");
  const after = events("d", 40, 45);
  for (const ev of after) await publisher.publish(`${topic}/0`, ev);
  const got = await take(sub, meanwhile.length + after.length);
  assert.deepEqual(got.map(ids), [...meanwhile, ...after].map(ids));
  assert.deepEqual(await more(sub), []);
  assert.equal(sub.recovered, true);
  assert.equal(client.connects, 2);
  assert.equal(client.resumes, 1); // the session continued (presence: degraded, then active)
  assert.deepEqual(states.slice(0, 2), ["reconnecting", "connected"]);
});

test("a publish whose answer was lost is sent again after the reconnect and stored once", needsServer, async (t) => {
  const client = await connected(t, {}, PROXY_URL);
  const reader = await connected(t);
  const topic = unique("once");
  const watcher = reader.subscribe(topic);
  await watcher.ready;
  await control("mute"); // the server's answers are lost from now on
  const publishing = client.publish(topic, { id: uid("once-1"), type: "t", data: 1 });
  const [stored] = await take(watcher, 1); // the server has it...
  assert.equal(ids(stored), "once-1");
  await control("drop"); // ...and the client never heard back
  const ack = await publishing; // sent again on the next connection
  assert.equal(ack.duplicate, true);
  assert.equal(ack.offset, stored.offset);
  assert.equal(ack.token, stored.token);
  const history = await reader.history(topic);
  assert.deepEqual(history.events.map(ids), ["once-1"]);
  assert.deepEqual(await more(watcher), []);
});

test("a server restart: the client reconnects and recovers exactly from its token", needsServer, async (t) => {
  const client = new Client(PROXY_URL, { token: TOKEN, ...FAST });
  t.after(() => client.close());
  await client.connect();
  const topic = unique("restart");
  const sub = client.subscribe(`${topic}/#`);
  await sub.ready;
  const first = await connected(t);
  const before = events("r", 0, 5);
  for (const ev of before) await first.publish(`${topic}/a`, ev);
  assert.deepEqual((await take(sub, 5)).map(ids), before.map(ids));
  const reasons = [];
  client.on("reconnect", (r) => reasons.push(r.reason));
  await control("restart"); // the server shuts down (4000) and starts again; the link is held
  await waitFor(() => client.state === "reconnecting", 5000, "the client seeing the shutdown");
  assert.match(reasons[0], /4000|1001|1006|1012/);
  const publisher = new Client(URL_, { token: TOKEN, ...FAST }); // the restarted server
  t.after(() => publisher.close());
  await publisher.connect();
  const meanwhile = events("r", 5, 25);
  await Promise.all(meanwhile.map((ev, n) => publisher.publish(`${topic}/${n % 2 ? "a" : "b"}`, ev)));
  await control("resume");
  const got = await take(sub, meanwhile.length, 15_000);
  assert.deepEqual(got.map(ids), meanwhile.map(ids));
  assert.deepEqual(await more(sub), []);
  assert.equal(sub.recovered, true); // the same log, the same epoch: exact
});

test("a publish in flight across a server restart is stored once", needsServer, async (t) => {
  const client = await connected(t, {}, PROXY_URL);
  const topic = unique("restart-publish");
  await control("mute"); // the answer is lost...
  const publishing = client.publish(topic, { id: uid("p-1"), type: "t" });
  const reader = await connected(t);
  await waitFor(async () => (await reader.history(topic)).events.length === 1, 5000, "the event stored");
  await reader.close();
  await control("restart"); // ...and the server goes away
  await control("resume");
  const ack = await publishing;
  assert.equal(ack.duplicate, true);
  const fresh = await connected(t);
  assert.deepEqual((await fresh.history(topic)).events.map(ids), ["p-1"]);
});

test("a link gone silent: after two heartbeats without a word the client reconnects", needsServer, async (t) => {
  const client = await connected(t, {}, PROXY_URL);
  const publisher = await connected(t);
  const topic = unique("silent");
  const sub = client.subscribe(topic);
  await sub.ready;
  assert.equal(client.info.ping, 1); // the harness's server pings every second
  const reasons = [];
  client.on("reconnect", (r) => reasons.push(r.reason));
  await control("mute"); // nothing reaches the client any more, and nothing says so
  const started = Date.now();
  // The client keeps talking (so the server, hearing it, keeps the connection open): its
  // pings go unanswered, and are sent again after the reconnect.
  const pings = [];
  const talking = setInterval(() => pings.push(client.ping()), 250);
  t.after(() => clearInterval(talking));
  const meanwhile = events("m", 0, 5);
  for (const ev of meanwhile) await publisher.publish(topic, ev);
  await waitFor(() => client.connects === 2, 10_000, "a reconnect");
  clearInterval(talking);
  await Promise.all(pings); // answered on the new connection
  assert.match(reasons[0], /4002/); // NO_PING, the client's own verdict
  assert.ok(Date.now() - started >= 1500, "dropped before two heartbeats were missed");
  assert.deepEqual((await take(sub, 5)).map(ids), meanwhile.map(ids));
  assert.deepEqual(await more(sub), []);
});
