// The client over wss:// in Node without NODE_EXTRA_CA_CERTS: the built-in WebSocket refuses
// the server (the test CA is not trusted); the `ws` package with `tls: { ca }` trusts it,
// and `tls: { ca, cert, key }` passes mutual TLS. The server's certificate is always checked.

import assert from "node:assert/strict";
import { test } from "node:test";
import WebSocket from "ws";

import { Client, MUTUAL_URL, URL_, needsServers, pem, refused, roundTrip } from "./support.mjs";

test("without trusting the CA the built-in WebSocket is refused: connect() rejects, no retry", needsServers, async () => {
  assert.notEqual(process.env.NODE_EXTRA_CA_CERTS, process.env.TLS_CA, "run without the test CA in NODE_EXTRA_CA_CERTS");
  const error = await refused(new Client(URL_, { reconnect: { base: 20, max: 100 } }));
  assert.match(error.message, /could not be opened/);
});

test("the ws package without options.tls: refused, saying why (the certificate)", needsServers, async () => {
  const error = await refused(new Client(URL_, { WebSocket, reconnect: { base: 20, max: 100 } }));
  assert.match(error.message, /certificate/i);
});

test("the ws package with tls.ca: connects, publishes, receives", needsServers, async () => {
  const info = await roundTrip(new Client(URL_, { WebSocket, tls: { ca: pem("TLS_CA") } }), "tls/ca");
  assert.equal(info.tenant, "acme");
});

test("verification stays on even with NODE_TLS_REJECT_UNAUTHORIZED=0", needsServers, async (t) => {
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0"; // what a process may have set for itself
  t.after(() => delete process.env.NODE_TLS_REJECT_UNAUTHORIZED);
  const error = await refused(new Client(URL_, { WebSocket, tls: {}, reconnect: { base: 20, max: 100 } }));
  assert.match(error.message, /certificate/i);
});

test("mutual TLS: tls.cert and tls.key pass; without them, or a stranger's, refused", needsServers, async () => {
  const ca = pem("TLS_CA");
  const mine = { ca, cert: pem("TLS_CLIENT_CERT"), key: pem("TLS_CLIENT_KEY") };
  const info = await roundTrip(new Client(MUTUAL_URL, { WebSocket, tls: mine }), "tls/mutual");
  assert.equal(info.tenant, "acme");
  const fast = { WebSocket, reconnect: { base: 20, max: 100 } };
  await refused(new Client(MUTUAL_URL, { ...fast, tls: { ca } }));
  const stranger = { ca, cert: pem("TLS_STRANGER_CERT"), key: pem("TLS_STRANGER_KEY") };
  await refused(new Client(MUTUAL_URL, { ...fast, tls: stranger }));
});

test("options.tls is refused where it cannot be honoured, and takes no other option", () => {
  const url = "wss://127.0.0.1:1/v1/ws";
  // The built-in WebSocket (a browser's, Node's) takes no TLS options.
  const builtin = class { constructor() {} };
  assert.throws(() => new Client(url, { WebSocket: builtin, tls: { ca: "x" } }), (e) => e instanceof TypeError && /ws package/.test(e.message));
  // Nothing that would loosen the check: not even a host name check of one's own.
  const loose = { ca: "x", checkServerIdentity: () => undefined };
  assert.throws(() => new Client(url, { WebSocket, tls: loose }), (e) => e instanceof TypeError && /checkServerIdentity/.test(e.message));
  assert.throws(() => new Client(url, { WebSocket, tls: { cert: "x" } }), (e) => e instanceof TypeError && /key/.test(e.message));
  assert.throws(() => new Client(url, { WebSocket, tls: "ca.pem" }), TypeError);
  new Client(url, { WebSocket, tls: { ca: "x", cert: "y", key: "z" } }); // (nothing opened yet)
});
