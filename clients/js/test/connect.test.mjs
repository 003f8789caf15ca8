// Connecting: a fixed token, a token provider and its refresh, refused tokens, no server.
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";

import { Client, HybridbusError } from "../src/index.js";
import { FAST, TOKEN, URL_, connected, events, ids, more, needsServer, take, token, uid, unique, waitFor } from "./support.mjs";

test("connect() resolves with the connect reply; states go connecting, connected, closed", needsServer, async () => {
  const client = new Client(URL_, { token: TOKEN, ...FAST, name: "js-test" });
  const states = [];
  client.on("state", (s) => states.push(s));
  const info = await client.connect();
  assert.equal(info.tenant, "acme");
  assert.equal(typeof info.client, "string");
  assert.ok(info.expires > Date.now() / 1000);
  assert.equal(client.expires, info.expires);
  assert.equal(typeof info.session, "string");
  assert.equal(client.state, "connected");
  await client.ping();
  await client.close();
  assert.deepEqual(states, ["connecting", "connected", "closed"]);
  await assert.rejects(client.publish("x/1", { type: "t" }), (e) => e instanceof HybridbusError && e.code === 1220);
});

test("a token provider is asked at connect and refreshes the token before it expires", needsServer, async (t) => {
  let calls = 0;
  const getToken = async () => {
    calls += 1;
    return await token({ sub: "ann", ttl: 3 });
  };
  const client = await connected(t, { token: undefined, getToken });
  const publisher = await connected(t);
  const first = client.expires;
  assert.equal(calls, 1);
  const topic = unique("refresh");
  const sub = client.subscribe(`${topic}/+`);
  await sub.ready;
  // Six seconds of events: two token lifetimes. Without a refresh the server would close
  // the connection with 4004 when the first token lapsed.
  const sent = [];
  for (let n = 0; n < 30; n++) {
    const [ev] = events("r", n, n + 1);
    await publisher.publish(`${topic}/1`, ev);
    sent.push(ids(ev));
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const got = await take(sub, sent.length);
  assert.deepEqual(got.map(ids), sent);
  assert.ok(calls >= 3, `the provider was asked ${calls} times`);
  assert.ok(client.expires > first, "the expiry moved on with each refresh");
  assert.equal(client.connects, 1, "a refresh came too late: the connection was closed");
});

test("a refused token makes connect() reject at once with the close code, without retrying", needsServer, async () => {
  const client = new Client(URL_, { token: await token({ sub: "bad" }), ...FAST });
  const reconnects = [];
  client.on("reconnect", (r) => reconnects.push(r));
  await assert.rejects(client.connect(), (error) => {
    assert.ok(error instanceof HybridbusError);
    assert.equal(error.code, 1220); // DISCONNECTED
    assert.equal(error.closeCode, 4501); // UNAUTHORIZED: terminal
    assert.equal(error.retriable, false);
    return true;
  });
  assert.equal(client.state, "closed");
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(reconnects, []);
});

test("a token refused on refresh ends the client: terminal, no reconnect", needsServer, async (t) => {
  let calls = 0;
  const getToken = async () => {
    calls += 1;
    return await token({ sub: calls === 1 ? "ann" : "bad" });
  };
  const client = await connected(t, { token: undefined, getToken });
  const reconnects = [];
  client.on("reconnect", (r) => reconnects.push(r));
  const sub = client.subscribe(unique("refused"));
  await sub.ready;
  await assert.rejects(client.refresh(), (e) => e instanceof HybridbusError && e.code === 1220);
  await waitFor(() => client.state === "closed", 5000, "the client closing");
  await assert.rejects(sub.next(), (e) => e.code === 1220 && e.closeCode === 4501);
  await assert.rejects(client.publish("x/1", { type: "t" }), (e) => e.code === 1220 && e.closeCode === 4501);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(reconnects, []);
  assert.equal(calls, 2);
});

test("a fixed token that expires ends the client (4004: only a provider could help)", needsServer, async (t) => {
  const client = await connected(t, { token: await token({ ttl: 2 }) });
  const closed = new Promise((resolve) => client.on("error", resolve));
  const error = await closed;
  assert.equal(error.code, 1220);
  assert.equal(error.closeCode, 4004);
  assert.equal(client.state, "closed");
});

test("with a provider, an expired token's close (4004) reconnects with a fresh token", needsServer, async (t) => {
  // The refresh is made to fail, so the token lapses: the server closes with 4004, the
  // client reconnects and asks the provider again.
  let calls = 0;
  let lapses = 0; // when the first token expires (Unix seconds)
  const getToken = async () => {
    calls += 1;
    if (calls === 1) {
      lapses = Date.now() / 1000 + 2;
      return await token({ ttl: 2 });
    }
    if (Date.now() / 1000 < lapses + 0.2) throw new Error("the token service is down");
    return await token({ ttl: 600 });
  };
  const client = await connected(t, { token: undefined, getToken, refreshMargin: 10 });
  const publisher = await connected(t);
  const topic = unique("expired");
  const sub = client.subscribe(topic);
  await sub.ready;
  await waitFor(() => client.connects === 2, 10_000, "a reconnect after 4004");
  await publisher.publish(topic, { id: uid("after"), type: "t" });
  const [got] = await take(sub, 1);
  assert.equal(ids(got), "after");
  assert.equal(client.state, "connected");
});

test("nothing listening: connect() rejects at once (1220, retriable)", needsServer, async () => {
  const client = new Client("ws://127.0.0.1:9/v1/ws", { ...FAST });
  await assert.rejects(client.connect(), (e) => e instanceof HybridbusError && e.code === 1220 && e.retriable);
  assert.equal(client.state, "closed");
});

const WS = new URL("../../../tests/js/node_modules/ws/wrapper.mjs", import.meta.url);
test("the WebSocket option: the ws package", { skip: !URL_ ? "no server" : !existsSync(WS) && "no tests/js/node_modules/ws" }, async (t) => {
  const { WebSocket } = await import(WS.href);
  const client = await connected(t, { WebSocket });
  const topic = unique("ws");
  const sub = client.subscribe(topic);
  await sub.ready;
  await client.publish(topic, { id: uid("w1"), type: "t", data: { via: "ws" } });
  const [got] = await take(sub, 1);
  assert.deepEqual(got.event.data, { via: "ws" });
  assert.deepEqual(await more(sub, 100), []);
});
