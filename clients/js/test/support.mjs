// Shared by the *.test.mjs files: where the real server is, tokens, and cutting the network.
//
// tests/clients/test_js_client.py runs these files with `node --test` against a real
// server it started (tests/clients/harness.py) and puts its addresses in the environment:
// JSTEST_URL (the server), JSTEST_PROXY_URL (the same server through a TCP proxy the
// test can cut), JSTEST_CONTROL (mints tokens, cuts the proxy, restarts the server) and
// JSTEST_TOKEN. Without them every test skips.

import { Client } from "../src/index.js";

export const URL_ = process.env.JSTEST_URL;
export const PROXY_URL = process.env.JSTEST_PROXY_URL;
export const CONTROL = process.env.JSTEST_CONTROL;
export const TOKEN = process.env.JSTEST_TOKEN;
/** `{skip}` for node:test: these tests need the harness's server. */
export const needsServer = { skip: URL_ ? false : "JSTEST_URL is not set: run tests/clients/test_js_client.py" };

/** Fast reconnects, short request timeouts: failures show within seconds. */
export const FAST = { reconnect: { base: 20, max: 300 }, requestTimeout: 10_000 };

let counter = 0;
/** A topic prefix no other test uses. */
export function unique(name) {
  counter += 1;
  return `js/${name}-${process.pid}-${Date.now().toString(36)}-${counter}`;
}

/** A token minted by the harness (`sub: "bad"`: signed with a key the server does not know). */
export async function token({ sub = "ann", ttl = 600, roles = "user" } = {}) {
  const r = await fetch(`${CONTROL}/token?sub=${sub}&ttl=${ttl}&roles=${roles}`);
  if (!r.ok) throw new Error(`token: ${r.status}`);
  return await r.text();
}

/** `drop`, `hold`, `resume`, `mute` or `restart` (tests/clients/harness.py). */
export async function control(what) {
  const r = await fetch(`${CONTROL}/${what}`, { method: "POST" });
  if (!r.ok) throw new Error(`${what}: ${r.status} ${await r.text()}`);
  return await r.json();
}

/** A connected client (closed by `t.after`). */
export async function connected(t, options = {}, url = URL_) {
  const client = new Client(url, { token: TOKEN, ...FAST, ...options });
  t.after(() => client.close());
  await client.connect();
  return client;
}

/** Resolves once `condition()` holds; rejects after `ms`. */
export async function waitFor(condition, ms = 10_000, what = "the condition") {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what} did not hold within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The next `count` deliveries of an iterable subscription (or group); rejects after `ms`. */
export async function take(sub, count, ms = 10_000) {
  const got = [];
  const deadline = Date.now() + ms;
  while (got.length < count) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`${got.length} of ${count} within ${ms} ms: ${JSON.stringify(got.map(ids))}`);
    got.push(...(await sub.take(count - got.length, left)));
  }
  return got;
}

/** Whatever more arrives on `sub` within `ms` (nothing, if all is well). */
export async function more(sub, ms = 300) {
  return await sub.take(100, ms);
}


/** What makes this process's event ids its own: the server dedupes by source + id. */
export const RUN = `${process.pid}-${Date.now().toString(36)}`;

/** An event id no other test uses. */
export const uid = (tag) => `${tag}-${RUN}`;

/** The id of a delivery's event (or of an event), without what `uid` added. */
export const ids = (x) => (x.event ? x.event.id : x.id).replace(`-${RUN}`, "");

/** The events `from` to `to` of a burst: `{id, type, data: {n}}`, ids `<tag>-<n>-<run>`. */
export function events(tag, from, to) {
  const out = [];
  for (let n = from; n < to; n++) out.push({ id: uid(`${tag}-${n}`), type: "com.acme.test", data: { n } });
  return out;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
