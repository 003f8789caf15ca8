/**
 * The JavaScript client: a connection to a hybridbus server that survives drops.
 *
 * Owns: the connection loop — one socket at a time (`socket.js`), reconnecting
 * with exponential backoff and full jitter, continuing the session (§4.1: each
 * connect presents the last `session`) — the commands and their answers
 * (request timeouts that include reconnects; what a drop left unanswered is
 * sent again on the next connection as it was, so a publish keeps its event
 * id and the server stores it once), writing (commands coalesced into one
 * frame per turn of the event loop, split at `max_frame_size`), the client's
 * state and events, and its end. Subscriptions and groups are `registry.js`'s,
 * awareness and state topics `collab.js`'s, the token `tokens.js`'s.
 *
 * Like the Python client (src/hybridbus/client/connection.py), reconnecting is
 * for connections that once worked: if the first connection fails, `connect()`
 * rejects at once. A terminal close (4500–4999: a refused token, a revocation),
 * or 4004 `TOKEN_EXPIRED` without a token provider, ends the client: everything
 * pending rejects with 1220 `DISCONNECTED` carrying the `closeCode`.
 *
 * Must not use bare module specifiers or Node APIs: src/ is loaded as is by
 * browsers, by a relative URL (the console serves it at /console/client/).
 *
 * @module
 */

import { Collab } from "./collab.js";
import { CloseCode, ErrorCode, HybridbusError, disconnected, reconnectAllowed } from "./errors.js";
import { Registry } from "./registry.js";
import { SUBPROTOCOL, speak } from "./socket.js";
import { tlsOptions } from "./tls.js";
import { Tokens } from "./tokens.js";

export { SUBPROTOCOL };
export const VERSION = "0.1.0";

/**
 * @typedef {{
 *   build: (id: number) => Record<string, any>,
 *   resolve: (result: any) => void,
 *   reject: (error: Error) => void,
 *   replay: boolean,
 *   answered?: (result: any) => void,
 *   timer?: ReturnType<typeof setTimeout>,
 *   done?: boolean,
 * }} Request
 */

const encoder = new TextEncoder();

/** A random event id (`crypto.randomUUID` where the page is a secure context). */
function newId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A connection to a hybridbus server that survives drops (index.d.ts has the whole API). */
export class Client {
  /**
   * @param {string} url the server's WebSocket endpoint, e.g. `ws://127.0.0.1:8080/v1/ws`
   * @param {any} [options] index.d.ts: ClientOptions
   */
  constructor(url, options = {}) {
    this.url = url;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket: pass options.WebSocket (Node 20: the ws package, or --experimental-websocket)");
    }
    const tls = tlsOptions(options.tls, this._WebSocket); // (ws only: tls.js)
    /** @type {(url: string) => any} a new socket: the constructor, with the TLS options if any */
    this._open = tls
      ? (url) => new this._WebSocket(url, SUBPROTOCOL, tls)
      : (url) => new this._WebSocket(url, SUBPROTOCOL);
    this._base = options.reconnect?.base ?? 100;
    this._max = options.reconnect?.max ?? 5000;
    this._timeout = options.requestTimeout ?? 30_000;
    this._name = options.name ?? "hybridbus-js";
    this._device = options.device ?? null;
    this._source = options.source ?? "/hybridbus-js";
    this._tokens = new Tokens(options.token ?? null, options.getToken ?? null, {
      timeout: this._timeout,
      margin: options.refreshMargin ?? 30_000,
      delay: (attempt) => this._delay(attempt),
    });
    /** @type {"idle" | "connecting" | "connected" | "reconnecting" | "closed"} */
    this.state = "idle";
    /** The last connect reply (`client`, `tenant`, `session`, `expires`…). @type {any} */
    this.info = null;
    /** The session token the next connect presents (§4.1). @type {string | null} */
    this.session = null;
    /** When the token expires (Unix seconds), as of the last connect or refresh. @type {number | null} */
    this.expires = null;
    this.connects = 0; // connections established (1 + reconnects)
    this.resumes = 0; // of which continued the session
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
    /** @type {any} the current socket */
    this._ws = null;
    this._live = false; // the current socket's connect was answered
    this._closed = false;
    /** @type {HybridbusError | null} what ended the client for good */
    this._failure = null;
    this._nextId = 1;
    /** @type {Map<number, Request>} commands sent on this connection, awaiting their answer */
    this._pending = new Map();
    /** @type {Request[]} commands for the next connection */
    this._waiting = [];
    /** @type {string[]} encoded messages for the next frame */
    this._outbox = [];
    this._flushing = false;
    this._maxFrame = 1 << 20;
    /** @type {(() => void) | null} wakes the reconnect wait when the client is closed */
    this._wakeUp = null;
    /** @type {Promise<any> | null} */
    this._opening = null;
    /** @type {{resolve: (result: any) => void, reject: (error: Error) => void} | null} */
    this._first = null;
    this._registry = new Registry({
      live: () => this._live,
      send: (message) => this._command(message),
      request: (message, opts) => this._request(message, opts),
      report: (error) => this._emit("error", error),
      presence: (change) => this._emit("presence", change),
      failure: () => this._failure ?? (this._closed ? disconnected(null, "the client is closed") : null),
      timeout: this._timeout,
      queueSize: options.queueSize ?? 10_000,
    });
    this._collab = new Collab({
      live: () => this._live,
      send: (message) => this._command(message),
      request: (message, opts) => this._request(message, opts),
      report: (error) => this._emit("error", error),
      failure: () => this._failure ?? (this._closed ? disconnected(null, "the client is closed") : null),
      self: () => this.info?.client ?? null,
      timeout: this._timeout,
      queueSize: options.queueSize ?? 10_000,
    });
  }

  // -- events ------------------------------------------------------------------------------

  /**
   * Listen: "state" (the new state), "error" (an error nobody awaits: what ended the client,
   * a failed refresh, a gap of a callback subscription…), "presence" (join / leave / presence
   * pushes of watched topics), "reconnect" (`{attempt, delay, reason}` before each wait).
   *
   * @param {string} type
   * @param {Function} listener
   * @returns {() => void} removes the listener
   */
  on(type, listener) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  /**
   * @param {string} type
   * @param {Function} listener
   */
  off(type, listener) {
    this._listeners.get(type)?.delete(listener);
  }

  /**
   * @param {string} type
   * @param {unknown} value
   */
  _emit(type, value) {
    for (const listener of [...(this._listeners.get(type) ?? [])]) {
      try {
        listener(value);
      } catch (error) {
        if (type !== "error") this._emit("error", error);
      }
    }
  }

  /** @param {"connecting" | "connected" | "reconnecting" | "closed"} state */
  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state);
  }

  // -- life cycle --------------------------------------------------------------------------

  /**
   * Connect; resolves with the server's connect reply. Rejects at once if this first
   * connection fails (nothing listens, the token is refused: `closeCode` says which);
   * once connected, the client reconnects by itself.
   *
   * @returns {Promise<any>}
   */
  connect() {
    if (this._opening === null) {
      this._opening = new Promise((resolve, reject) => {
        this._first = { resolve, reject };
      });
      this._setState("connecting");
      this._run().catch((error) => this._emit("error", error));
    }
    return this._opening;
  }

  /** Close the connection; pending commands reject with 1220, iterations end. */
  async close() {
    if (this._closed) return;
    this._closed = true;
    this._tokens.stop();
    this._wakeUp?.();
    const ws = this._ws;
    if (ws) {
      this._flush(); // an unsubscribe or a leave just asked for
      try {
        ws.close(1000, "the client was closed");
      } catch {
        // already closing
      }
    }
    this._end(disconnected(null, "the client was closed"), true);
  }

  async _run() {
    let attempt = 0; // attempts since the last connection that worked
    while (!this._closed) {
      const { code, reason, connected } = await this._connection();
      if (this._closed) return;
      const why = code === null ? reason : `closed with ${code}: ${reason}`;
      let failure = null;
      if (code !== null && !reconnectAllowed(code)) failure = disconnected(code, reason);
      else if (code === CloseCode.TOKEN_EXPIRED && !this._tokens.renewable) {
        failure = disconnected(code, `${reason} (the client has no token provider)`);
      } else if (!this.connects) {
        // Never connected: report it, don't wait it out.
        const text = `cannot connect to ${this.url}: ${why}`;
        failure = new HybridbusError(ErrorCode.DISCONNECTED, text, { closeCode: code, retriable: true });
      }
      if (failure) {
        this._end(failure, false);
        return;
      }
      if (connected) attempt = 0;
      const delay = this._delay(attempt);
      attempt += 1;
      this._setState("reconnecting");
      this._emit("reconnect", { attempt, delay, reason: why });
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay);
        this._wakeUp = () => {
          clearTimeout(timer);
          resolve(undefined);
        };
      });
      this._wakeUp = null;
    }
  }

  /**
   * Full jitter: a random delay up to `min(max, base * 2^attempt)` ms.
   *
   * @param {number} attempt
   */
  _delay(attempt) {
    return Math.random() * Math.min(this._max, this._base * 2 ** attempt);
  }

  /** One connection: a token, a socket, the protocol until the socket ends. */
  async _connection() {
    /** @type {string | null} */
    let token;
    try {
      token = await this._tokens.forConnect();
    } catch (error) {
      this._emit("error", error);
      return { code: null, reason: `the token provider failed: ${error}`, connected: false };
    }
    if (this._closed) return { code: 1000, reason: "the client was closed", connected: false };
    /** @type {any} */
    let ws;
    try {
      ws = this._open(this.url);
    } catch (error) {
      return { code: null, reason: String(error), connected: false };
    }
    this._ws = ws;
    /** @type {Record<string, any>} */
    const connect = { type: "connect", id: this._nextId++, name: this._name, version: VERSION };
    if (token) connect.token = token;
    if (this._device) connect.device = this._device;
    if (this.session) connect.session = this.session;
    return await speak(ws, {
      connect,
      connected: (result) => this._connected(result),
      handle: (m) => this._handle(m),
      ended: () => {
        if (this._ws === ws) this._ws = null;
        this._disconnected();
      },
    });
  }

  /**
   * The connect was answered: send what waits (resubscribes, rejoins, commands).
   *
   * @param {any} result
   */
  _connected(result) {
    this._live = true;
    this.connects += 1;
    this.info = result;
    this.session = result.session ?? null;
    if (result.resumed) this.resumes += 1;
    if (result.max_frame_size > 0) this._maxFrame = result.max_frame_size;
    this._scheduleRefresh(result.expires ?? null);
    this._registry.connected();
    this._collab.connected(); // before what waits: a replayed set or patch lands after them
    const waiting = this._waiting;
    this._waiting = [];
    for (const request of waiting) if (!request.done) this._issue(request);
    this._setState("connected");
    if (this.connects === 1) this._first?.resolve(result);
    this._flush();
  }

  /** The socket ended: unanswered commands wait for the next connection, in order. */
  _disconnected() {
    this._live = false;
    this._outbox = [];
    this._tokens.stop();
    const inFlight = [...this._pending.entries()].sort(([a], [b]) => a - b).map(([, r]) => r);
    this._pending.clear();
    const again = [];
    for (const request of inFlight) {
      if (request.replay) again.push(request);
      else this._settle(request, null, disconnected(null, "the connection ended before the answer"));
    }
    this._waiting.unshift(...again);
    this._registry.disconnected();
    this._collab.disconnected();
  }

  /**
   * The client ended: everything pending rejects with `error`, every subscription and group
   * ends (quietly — without the error — when the application closed the client).
   *
   * @param {HybridbusError} error
   * @param {boolean} quietly
   */
  _end(error, quietly) {
    this._closed = true;
    if (!quietly) this._failure = error;
    this._tokens.stop();
    for (const request of [...this._pending.values(), ...this._waiting]) this._settle(request, null, error);
    this._pending.clear();
    this._waiting = [];
    this._registry.failAll(error, quietly);
    this._collab.failAll(error, quietly);
    this._first?.reject(error);
    this._setState("closed");
    if (!quietly) this._emit("error", error);
  }

  // -- what the server sends -----------------------------------------------------------------

  /**
   * Act on one message once connected; returns why it breaks the protocol, if it does.
   *
   * @param {any} m
   * @returns {string | null}
   */
  _handle(m) {
    if (m.type === "ping") {
      this._outbox.push('{"type":"pong"}');
      this._schedule();
      return null;
    }
    if (m.type === "reply" || m.type === "error") {
      const error =
        m.type === "error"
          ? new HybridbusError(m.code, m.message ?? "", { retriable: m.retriable, node: m.node, url: m.url })
          : null;
      const result = m.result ?? {};
      if (this._registry.replied(m.id, result, error) || this._collab.replied(m.id, result, error)) {
        this._schedule(); // a presence watch may follow a subscribe reply
        return null;
      }
      const request = this._pending.get(m.id);
      if (request) {
        this._pending.delete(m.id);
        this._settle(request, result, error);
      }
      return null; // (or the answer to a command that timed out meanwhile)
    }
    const violation = this._collab.pushed(m) ? null : this._registry.pushed(m);
    this._schedule();
    return violation;
  }

  // -- commands ------------------------------------------------------------------------------

  /**
   * Queue a command (`message` without its id) on the live connection; its id.
   *
   * @param {Record<string, any>} message
   */
  _command(message) {
    const id = this._nextId++;
    this._outbox.push(JSON.stringify({ ...message, id }));
    this._schedule();
    return id;
  }

  /**
   * Send a command; resolves with its result. Sent again on the next connection if this one
   * ends before the answer (unless `replay` is false).
   *
   * `answered` sees the result in the turn the answer arrived in, before the pushes after it.
   *
   * @param {Record<string, any>} message
   * @param {{replay?: boolean, answered?: (result: any) => void}} [options]
   * @returns {Promise<any>}
   */
  _request(message, options = {}) {
    const failure = this._failure ?? (this._closed ? disconnected(null, "the client is closed") : null);
    if (failure) return Promise.reject(failure);
    return new Promise((resolve, reject) => {
      /** @type {Request} */
      const request = {
        build: (id) => ({ ...message, id }),
        resolve,
        reject,
        replay: options.replay ?? true,
        answered: options.answered,
      };
      request.timer = setTimeout(() => {
        for (const [id, pending] of this._pending) if (pending === request) this._pending.delete(id);
        this._waiting = this._waiting.filter((r) => r !== request);
        const why = `no answer to ${message.type} within ${this._timeout} ms`;
        this._settle(request, null, new HybridbusError(ErrorCode.DISCONNECTED, why, { retriable: true }));
      }, this._timeout);
      if (this._live) this._issue(request);
      else this._waiting.push(request);
    });
  }

  /** @param {Request} request */
  _issue(request) {
    const id = this._nextId++;
    this._pending.set(id, request);
    this._outbox.push(JSON.stringify(request.build(id)));
    this._schedule();
  }

  /**
   * @param {Request} request
   * @param {any} result
   * @param {Error | null} error
   */
  _settle(request, result, error) {
    if (request.done) return;
    request.done = true;
    clearTimeout(request.timer);
    if (error) {
      request.reject(error);
    } else {
      request.answered?.(result);
      request.resolve(result);
    }
  }

  /**
   * Publish a CloudEvent to `topic` (relative to the tenant); resolves with the ack.
   * `specversion`, `id` (a random UUID) and `source` are filled in if missing. Across a
   * reconnect it is sent again with the same id: the server stores it once.
   *
   * @param {string} topic
   * @param {Record<string, any>} event
   * @param {{excludeSelf?: "connection" | "device"}} [options]
   */
  publish(topic, event, options = {}) {
    const ce = { specversion: "1.0", id: newId(), source: this._source, ...event };
    /** @type {Record<string, any>} */
    const message = { type: "publish", topic, event: ce };
    if (options.excludeSelf) message.exclude_self = options.excludeSelf;
    return this._request(message);
  }

  /**
   * Retained events of `pattern`, oldest first. `since`: a resume token, or a Unix time in
   * seconds (`since_time`).
   *
   * @param {string} pattern
   * @param {{since?: string | number, limit?: number, filter?: Record<string, any>}} [options]
   */
  history(pattern, options = {}) {
    /** @type {Record<string, any>} */
    const message = { type: "history", pattern };
    if (typeof options.since === "number") message.since_time = options.since;
    else if (options.since) message.since = options.since;
    if (options.limit !== undefined) message.limit = options.limit;
    if (options.filter) message.filter = options.filter;
    return this._request(message);
  }

  /**
   * The members of `topic` (pages with `limit` and `cursor`).
   *
   * @param {string} topic
   * @param {{limit?: number, cursor?: string}} [options]
   */
  presence(topic, options = {}) {
    /** @type {Record<string, any>} */
    const message = { type: "presence", topic };
    if (options.limit !== undefined) message.limit = options.limit;
    if (options.cursor !== undefined) message.cursor = options.cursor;
    return this._request(message);
  }

  /** A round trip to the server. */
  async ping() {
    await this._request({ type: "ping" });
  }

  /**
   * Subscribe to `pattern`: deliveries exactly once and in order across reconnects.
   *
   * @param {string} pattern
   * @param {any} [options] index.d.ts: SubscribeOptions
   */
  subscribe(pattern, options = {}) {
    return this._registry.subscribe(pattern, options);
  }

  /**
   * Join consumer group `name` (created over `pattern` if it does not exist). `options`:
   * `member` and the group's settings with their protocol names (`ack_wait`, `start`…).
   *
   * @param {string} name
   * @param {string | null} [pattern]
   * @param {Record<string, any>} [options]
   */
  group(name, pattern = null, options = {}) {
    return this._registry.group(name, pattern, options);
  }

  /**
   * The awareness view of `topic` (docs/protocol.md §5.11): this client's state on it
   * (`set`), the others' (`watch`, `on("change")`, `states()`); one view per topic.
   *
   * @param {string} topic
   */
  awareness(topic) {
    return this._collab.awareness(topic);
  }

  /**
   * Subscribe to the state document of `topic` (docs/protocol.md §5.12); resolves with the
   * `StateTopic` once the server answered: its `document` and `version`, kept current across
   * reconnects. (Not `state`: that is the client's connection state.)
   *
   * @param {string} topic
   */
  stateTopic(topic) {
    return this._collab.state(topic);
  }

  /**
   * Merge `patch` (RFC 7396) into the state document of `topic`; resolves with its new
   * version (1640 `STATE_CONFLICT` when `ifVersion` is not the version). A subscribed
   * document's `patch` also waits until the document holds it.
   *
   * @param {string} topic
   * @param {any} patch
   * @param {{ifVersion?: number, lamport?: number}} [options]
   * @returns {Promise<number>}
   */
  patch(topic, patch, options = {}) {
    return this._collab.patch(topic, patch, options);
  }

  // -- tokens --------------------------------------------------------------------------------

  /**
   * Hand the server a fresh token now: `token`, or one from the provider (or the fixed one
   * again). Resolves with when it expires (Unix seconds; null: never). A refused token
   * closes the connection (4501/4502), which ends the client.
   *
   * @param {string} [token]
   * @returns {Promise<number | null>}
   */
  async refresh(token) {
    const fresh = await this._tokens.forRefresh(token);
    if (!fresh) throw new HybridbusError(ErrorCode.INVALID_INPUT, "refresh() needs a token: the client has none");
    const result = await this._request({ type: "refresh", token: fresh }, { replay: false });
    this._scheduleRefresh(result.expires ?? null);
    return result.expires ?? null;
  }

  /** @param {number | null} expires */
  _scheduleRefresh(expires) {
    this.expires = expires;
    if (this._closed) return;
    this._tokens.schedule(
      expires,
      () => this.refresh(),
      (error) => {
        if (this._closed || !this._live) return false; // lapsed: the reconnect gets a new one
        this._emit("error", error);
        return true;
      },
    );
  }

  // -- writing -------------------------------------------------------------------------------

  /** Send what is queued at the end of this turn of the event loop: one frame. */
  _schedule() {
    if (!this._flushing && this._outbox.length) {
      this._flushing = true;
      queueMicrotask(() => this._flush());
    }
  }

  /** Send what is queued: as few frames as `max_frame_size` allows (one, nearly always). */
  _flush() {
    this._flushing = false;
    const ws = this._ws;
    if (!ws || !this._live || !this._outbox.length) return;
    const lines = this._outbox;
    this._outbox = [];
    let frame = "";
    let size = 0;
    for (const line of lines) {
      const bytes = encoder.encode(line).length + 1;
      if (frame && size + bytes > this._maxFrame) {
        ws.send(frame);
        frame = "";
        size = 0;
      }
      frame = frame ? `${frame}\n${line}` : line;
      size += bytes;
    }
    if (frame) ws.send(frame);
  }
}
