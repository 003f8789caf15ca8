/**
 * @hybridbus/client — the hybridbus client for browsers and Node, with no build step.
 *
 *     import { Client, HybridbusError } from "@hybridbus/client";  // or "./src/index.js"
 *     const client = new Client("ws://127.0.0.1:8080/v1/ws", { token });
 *     await client.connect();
 *     const sub = client.subscribe("docs/+");
 *     await client.publish("docs/42", { type: "com.acme.note", data: { x: 1 } });
 *     for await (const ev of sub) console.log(ev.topic, ev.offset, ev.event.data);
 *
 * Owns: the public surface (the names index.d.ts declares). Everything under
 * src/ imports by relative URL only, so a browser loads it as ES modules as
 * is (the console serves this directory at /console/client/). The protocol is
 * docs/protocol.md; the behaviour across reconnects matches the Python client
 * (docs/clients.md).
 *
 * @module
 */

export { Awareness } from "./awareness.js";
export { Client, SUBPROTOCOL, VERSION } from "./client.js";
export { CloseCode, ErrorCode, HybridbusError, codeName, reconnectAllowed, retriable } from "./errors.js";
export { Group, GroupDelivery } from "./group.js";
export { mergePatch } from "./mergepatch.js";
export { formatToken, parseToken } from "./position.js";
export { StateTopic } from "./state.js";
export { Subscription } from "./subscription.js";
