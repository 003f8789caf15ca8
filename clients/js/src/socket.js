/**
 * One WebSocket connection of the client, from its opening to its end.
 *
 * Owns: the connect handshake on one socket (the `connect` command first and
 * alone, §4), splitting frames into JSON lines (§2.1), the server's
 * `disconnect` message and close code (§6.5, §11), the heartbeat timeout of
 * §8 (nothing heard for 2 × `ping`: drop the socket without waiting for a
 * close handshake that cannot come), and the connect timeout. Must not know
 * about subscriptions, groups or commands: `hooks` get every message once
 * connected, and the client decides what to do after the end.
 *
 * @module
 */

import { CloseCode } from "./errors.js";

export const SUBPROTOCOL = "hybridbus.v1.json";
const TICK = 1000; // ms between heartbeat checks
const CONNECT_TIMEOUT = 10_000; // ms the server has to answer `connect`

/**
 * @typedef {object} Hooks
 * @property {Record<string, any>} connect the `connect` command to send (with its id)
 * @property {(result: any) => void} connected the connect was answered
 * @property {(message: any) => string | null} handle a message after the connect reply;
 *   returns why it breaks the protocol, if it does (the socket is then closed with 4500)
 * @property {() => void} ended the socket is over (before the promise resolves)
 */

/**
 * @typedef {{code: number | null, reason: string, connected: boolean}} Ending
 *   `code`: the close code (null: no close frame, the connection could not be made or failed)
 */

/**
 * Speak the protocol on `ws` (just constructed) until it ends.
 *
 * @param {any} ws a WebSocket: the browser's, undici's or `ws`'s
 * @param {Hooks} hooks
 * @returns {Promise<Ending>}
 */
export function speak(ws, hooks) {
  ws.binaryType = "arraybuffer";
  const decoder = new TextDecoder();
  return new Promise((resolve) => {
    let opened = false;
    let connected = false;
    let finished = false;
    let heard = Date.now();
    let ping = 0; // seconds, from the connect reply
    /** @type {{code: number, reason: string} | null} */
    let said = null; // the server's `disconnect` message
    const started = Date.now();
    /** @type {ReturnType<typeof setInterval> | undefined} */
    let ticker = undefined;

    const finish = (/** @type {number | null} */ code, /** @type {string} */ reason) => {
      if (finished) return;
      finished = true;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      clearInterval(ticker);
      hooks.ended();
      resolve({ code, reason, connected });
    };
    const drop = (/** @type {number} */ code, /** @type {string} */ reason) => {
      try {
        ws.close(code, reason.slice(0, 120));
      } catch {
        // already closing
      }
      finish(code, reason);
    };

    ws.onopen = () => {
      opened = true;
      if (ws.protocol !== SUBPROTOCOL) {
        drop(CloseCode.UNSUPPORTED, "the server speaks no known subprotocol");
        return;
      }
      ws.send(JSON.stringify(hooks.connect));
    };
    ws.onmessage = (/** @type {{data: any}} */ message) => {
      heard = Date.now();
      const text = typeof message.data === "string" ? message.data : decoder.decode(message.data);
      for (const line of text.split("\n")) {
        if (!line.trim()) continue; // a trailing newline, whitespace: allowed
        /** @type {any} */
        let m;
        try {
          m = JSON.parse(line);
        } catch {
          drop(CloseCode.BAD_PROTOCOL, "the server sent a line that is not JSON");
          return;
        }
        if (m === null || typeof m !== "object") {
          drop(CloseCode.BAD_PROTOCOL, "the server sent a line that is not a JSON object");
          return;
        }
        /** @type {string | null} */
        let violation = null;
        try {
          if (m.type === "disconnect") {
            said = { code: m.code, reason: m.reason ?? "" };
          } else if (!connected) {
            if (m.type === "reply" && m.id === hooks.connect.id) {
              connected = true;
              ping = m.result?.ping ?? 0;
              hooks.connected(m.result ?? {});
            }
          } else {
            violation = hooks.handle(m);
          }
        } catch (error) {
          // A message the client cannot make sense of (a malformed position…): the server
          // broke the protocol. Never an exception out of a WebSocket handler.
          violation = `a ${m.type} message the client cannot read: ${error}`;
        }
        if (violation) {
          drop(CloseCode.BAD_PROTOCOL, violation);
          return;
        }
        if (finished) return; // a hook closed the client
      }
    };
    ws.onerror = (/** @type {any} */ event) => {
      // A close event follows, except where it does not: Node 20's WebSocket (undici)
      // reports a connection that could not be made with an error alone. The `ws`
      // package says why (a certificate not trusted…); a browser never does.
      const why = event?.message ? `: ${event.message}` : "";
      if (!opened) finish(null, `the connection could not be opened${why}`);
      else setTimeout(() => finish(null, `the connection failed${why}`), 2000);
    };
    ws.onclose = (/** @type {{code: number, reason: string}} */ event) => {
      // The close frame's code, or the disconnect message's when the frame did not come.
      const code = event.code === 1006 && said ? said.code : event.code;
      finish(code, event.reason || said?.reason || "connection lost");
    };
    ticker = setInterval(() => {
      const now = Date.now();
      if (!connected && now - started >= CONNECT_TIMEOUT) {
        drop(CloseCode.NO_PING, "no connect reply in time");
      } else if (connected && ping > 0 && now - heard >= 2000 * ping) {
        drop(CloseCode.NO_PING, `nothing heard for ${2 * ping} s`);
      }
    }, TICK);
  });
}
