// Node's built-in WebSocket over wss://, trusting the test CA through NODE_EXTRA_CA_CERTS
// (tests/clients/test_js_tls.py runs this file with it set, and options.test.mjs without).

import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, URL_, needsServers, roundTrip } from "./support.mjs";

test("NODE_EXTRA_CA_CERTS: the built-in WebSocket connects over wss://, publishes, receives", needsServers, async () => {
  assert.ok(process.env.NODE_EXTRA_CA_CERTS, "run with NODE_EXTRA_CA_CERTS=<the test CA>");
  assert.equal(typeof globalThis.WebSocket, "function", "Node 20: --experimental-websocket");
  const info = await roundTrip(new Client(URL_), "tls/extra-ca");
  assert.equal(info.tenant, "acme");
});
