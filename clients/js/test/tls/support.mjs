// Shared by the TLS tests (tls/*.test.mjs): where the TLS servers and the certificates are.
//
// tests/clients/test_js_tls.py starts the servers (tests/gateways/tls_support.py makes a
// throwaway CA, a server certificate for 127.0.0.1 signed by it, and client certificates)
// and runs each file with `node --test`, putting in the environment: TLS_URL (wss://, a
// server anyone may connect to, anonymous clients in tenant acme), TLS_MUTUAL_URL (the
// same, requiring a client certificate its CA signed: mutual TLS), TLS_CA (the CA's PEM
// file), TLS_CLIENT_CERT / TLS_CLIENT_KEY (a client certificate of that CA) and
// TLS_STRANGER_CERT / TLS_STRANGER_KEY (one of a CA nobody trusts). Without them every
// test skips. These files are not *.test.mjs of test/: `npm test` does not run them.

import { readFileSync } from "node:fs";
import assert from "node:assert/strict";

import { Client, HybridbusError } from "../../src/index.js";

export const URL_ = process.env.TLS_URL;
export const MUTUAL_URL = process.env.TLS_MUTUAL_URL;
export const needsServers = { skip: URL_ ? false : "TLS_URL is not set: run tests/clients/test_js_tls.py" };

/** A PEM file of the environment variable `name`, as a Buffer. */
export function pem(name) {
  return readFileSync(process.env[name]);
}

/** Connect, subscribe to a topic, publish an event and take it back; then close. */
export async function roundTrip(client, topic) {
  const info = await client.connect();
  try {
    const sub = client.subscribe(topic);
    await sub.ready;
    const ack = await client.publish(topic, { id: `${topic}-1`, type: "com.acme.tls", data: { over: "tls" } });
    for await (const ev of sub) {
      assert.equal(ev.event.id, `${topic}-1`);
      assert.equal(ev.offset, ack.offset);
      break;
    }
    return info;
  } finally {
    await client.close();
  }
}

/**
 * `connect()` rejects at once — 1220 DISCONNECTED, no close code, the URL in the message —
 * and the client does not retry: it is closed and no reconnect was tried. Returns the error.
 */
export async function refused(client) {
  const reconnects = [];
  client.on("reconnect", (r) => reconnects.push(r));
  const started = Date.now();
  let error = null;
  try {
    await assert.rejects(client.connect(), (e) => {
      error = e;
      return e instanceof HybridbusError;
    });
    assert.equal(client.state, "closed");
  } finally {
    await client.close(); // (connected after all: the socket must not keep node running)
  }
  assert.equal(error.code, 1220, error.message);
  assert.equal(error.closeCode, null, error.message);
  assert.match(error.message, /^1220 DISCONNECTED: cannot connect to wss:\/\/127\.0\.0\.1:\d+\/v1\/ws: /);
  assert.ok(Date.now() - started < 8000, `rejected after ${Date.now() - started} ms`);
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.deepEqual(reconnects, []);
  return error;
}

export { Client, HybridbusError };
