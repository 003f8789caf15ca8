/**
 * Awareness on one topic in the JavaScript client (docs/protocol.md §5.11, §6.9).
 *
 *     const aw = client.awareness("docs/42");
 *     await aw.set({ cursor: { line: 3, ch: 14 } });          // this client's state
 *     aw.on("change", ({ client, state, removed }) => draw(client, state, removed));
 *     aw.states();                                              // the others', by client id
 *
 * Owns: `Awareness`, one topic's view: this client's own state (`own`, merged
 * from the `awareness_set` answers, and set again on every new connection:
 * the server removes a connection's states when it sees it close), the others'
 * states while watched (the watch reply's full set, then `awareness` pushes;
 * after a reconnect the watch is sent again and its full set compared with
 * what was held: a client no longer there is reported `removed`, one whose
 * state differs is reported changed), the change listeners and the iterator
 * (at most one waiting change per client: the newest). Must not do I/O: the
 * client's collaboration views (`collab.js`) send its commands and feed it.
 *
 * This client's own state is left out of the others'. The server names an
 * awareness state by the client's presence id, the connect reply's `client`
 * (`client.info.client`), which a resumed session keeps and a new session
 * changes: an entry under the current one is this client's.
 *
 * @module
 */

import { Changes, Listeners } from "./changes.js";
import { ErrorCode, HybridbusError } from "./errors.js";
import { jsonEqual } from "./mergepatch.js";

/**
 * @typedef {{client: string, state: Record<string, any>, lamport: number, user: string | null}} AwarenessState
 * @typedef {AwarenessState & {topic: string, removed: boolean}} AwarenessChange
 * @typedef {{resolve: (states: Map<string, AwarenessState>) => void, reject: (error: Error) => void}} Opening
 * @typedef {import("./collab.js").Collab} Collab
 */

/**
 * @param {string} topic
 * @returns {HybridbusError}
 */
function closedError(topic) {
  return new HybridbusError(ErrorCode.INVALID_INPUT, `the awareness view of ${topic} was closed`);
}

/** Awareness on one topic: `client.awareness(topic)` (see the module docstring). */
export class Awareness {
  /**
   * @param {Collab} owner
   * @param {string} topic
   */
  constructor(owner, topic) {
    this._owner = owner;
    /** The topic, relative to the tenant. */
    this.topic = topic;
    /** This client's state on the topic, as the server took it. @type {Record<string, any>} */
    this.own = Object.create(null);
    /** @type {Map<string, AwarenessState>} the others' states, while watched */
    this._states = new Map();
    /** @type {Listeners<AwarenessChange>} */
    this._listeners = new Listeners((error) => owner._report(error));
    /** @type {Changes<AwarenessChange> | null} once iterated */
    this._changes = null;
    this._watching = false; // a watch is wanted (sent again after every reconnect)
    this._live = false; // the watch was answered on this connection
    /** @type {Opening[]} `watch()` calls awaiting the reply */
    this._openings = [];
    /** @type {Set<Promise<unknown>>} `set` commands awaiting their answer */
    this._setting = new Set();
    this._ended = false;
  }

  /** Whether the view was closed (or the client ended). */
  get ended() {
    return this._ended;
  }

  /** Whether the others' states are watched. */
  get watching() {
    return this._watching;
  }

  /**
   * The others' current states, by client id (empty until the watch was answered).
   *
   * @returns {Map<string, AwarenessState>}
   */
  states() {
    return new Map(this._states);
  }

  /**
   * Merge `changes` into this client's state on the topic (a `null` value removes its key);
   * resolves with the Lamport stamp the server gave the change. Rejects with 1643 or 1644
   * (too many keys, a value too large), changing nothing.
   *
   * @param {Record<string, any>} changes
   * @param {{lamport?: number}} [options]
   * @returns {Promise<number>}
   */
  set(changes, options = {}) {
    if (this._ended) return Promise.reject(closedError(this.topic));
    changes = { ...changes }; // as it was when set, whatever the caller does with it meanwhile
    /** @type {Record<string, any>} */
    const message = { type: "awareness_set", topic: this.topic, state: changes };
    if (options.lamport !== undefined) message.lamport = options.lamport;
    const answered = () => {
      for (const [key, value] of Object.entries(changes)) {
        if (value === null) delete this.own[key];
        else this.own[key] = value;
      }
    };
    const sent = this._owner._request(message, { answered }).then((result) => /** @type {number} */ (result.lamport));
    const tracked = sent.catch(() => {});
    this._setting.add(tracked);
    tracked.then(() => this._setting.delete(tracked));
    return sent;
  }

  /**
   * Watch the others' states: resolves with them once the server answered (every later
   * change comes to the `change` listeners and the iterator). `on("change")` and iterating
   * watch too. Rejects with 1110 without `presence` on the topic.
   *
   * @returns {Promise<Map<string, AwarenessState>>}
   */
  watch() {
    if (this._ended) return Promise.reject(closedError(this.topic));
    const failure = this._owner._failure();
    if (failure) return Promise.reject(failure);
    if (this._live) return Promise.resolve(this.states());
    return new Promise((resolve, reject) => {
      const timeout = this._owner._timeout;
      /** @type {Opening} */
      const opening = {
        resolve: (states) => {
          clearTimeout(timer);
          resolve(states);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        this._openings = this._openings.filter((o) => o !== opening);
        reject(new HybridbusError(ErrorCode.DISCONNECTED, `no awareness_watch reply within ${timeout} ms`));
      }, timeout);
      this._openings.push(opening);
      this._startWatch();
    });
  }

  /** No more changes of the others' states (the view keeps this client's own state). */
  async unwatch() {
    if (!this._watching) return;
    this._stopWatch();
    await this._owner._quietly({ type: "awareness_unwatch", topic: this.topic });
  }

  /**
   * Listen to the others' changes ("change": `{topic, client, state, lamport, user, removed}`);
   * starts watching. Returns a function that removes the listener.
   *
   * @param {"change"} type
   * @param {(change: AwarenessChange) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    if (type !== "change") throw new TypeError(`an awareness view has no ${type} event`);
    const off = this._listeners.add(listener);
    if (!this._ended) this._startWatch();
    return off;
  }

  /**
   * @param {"change"} _type
   * @param {(change: AwarenessChange) => void} listener
   */
  off(_type, listener) {
    this._listeners.delete(listener);
  }

  /**
   * Stop: this client's state on the topic is cleared (its keys set to `null`: the watchers
   * see an empty state; the server removes it when the connection closes), the watch ends,
   * the iterator is done, and the client forgets the view (`client.awareness(topic)` makes
   * a new one).
   */
  async close() {
    if (this._ended) return;
    this._ended = true;
    this._owner._forget(this);
    await Promise.all([...this._setting]); // a set in flight: its keys are cleared too
    const keys = Object.keys(this.own);
    this.own = Object.create(null);
    const watching = this._watching;
    this._stopWatch(closedError(this.topic));
    this._changes?.end();
    const done = [];
    if (keys.length) {
      const state = Object.fromEntries(keys.map((key) => [key, null]));
      done.push(this._owner._quietly({ type: "awareness_set", topic: this.topic, state }));
    }
    if (watching) done.push(this._owner._quietly({ type: "awareness_unwatch", topic: this.topic }));
    await Promise.all(done);
  }

  /** @returns {AsyncIterator<AwarenessChange>} */
  [Symbol.asyncIterator]() {
    return this;
  }

  /**
   * The next change of the others' states (watching from the first call: the states held
   * then come first, one change each).
   *
   * @returns {Promise<IteratorResult<AwarenessChange, undefined>>}
   */
  next() {
    return this._iterate().next();
  }

  /**
   * Up to `limit` changes at once, waiting up to `wait` ms for the first (none: for ever).
   *
   * @param {number} [limit]
   * @param {number} [wait]
   * @returns {Promise<AwarenessChange[]>}
   */
  take(limit = 100, wait) {
    return this._iterate().take(limit, wait);
  }

  /**
   * Leaving a `for await` loop closes the view.
   *
   * @returns {Promise<IteratorResult<AwarenessChange, undefined>>}
   */
  async return() {
    await this.close().catch(() => {});
    return { value: undefined, done: true };
  }

  // -- inside ------------------------------------------------------------------------------

  /** @returns {Changes<AwarenessChange>} */
  _iterate() {
    if (this._changes === null) {
      this._changes = new Changes();
      if (this._ended) this._changes.end();
      for (const state of this._states.values()) this._changes.put(state.client, this._change(state, false));
      if (!this._ended) this._startWatch();
    }
    return this._changes;
  }

  _startWatch() {
    if (this._watching) return;
    this._watching = true;
    this._owner._watch(this);
  }

  /** @param {Error} [error] what `watch()` calls still waiting reject with */
  _stopWatch(error) {
    this._watching = false;
    this._live = false;
    this._states.clear();
    const openings = this._openings.splice(0);
    for (const opening of openings) {
      if (error) opening.reject(error);
      else opening.resolve(new Map());
    }
  }

  /**
   * @param {AwarenessState} state
   * @param {boolean} removed
   * @returns {AwarenessChange}
   */
  _change(state, removed) {
    return { topic: this.topic, ...state, removed };
  }

  /**
   * Whether a state the server tells of is this client's own (module docstring).
   *
   * @param {{client: string}} entry
   */
  _isMine(entry) {
    return entry.client === this._owner._self();
  }

  /** @param {AwarenessChange} change */
  _emit(change) {
    this._listeners.emit(change);
    this._changes?.put(change.client, change);
  }

  // -- fed by the client's collaboration views ----------------------------------------------

  /** A new connection: this client's state again, then the watch again. */
  _connected() {
    if (Object.keys(this.own).length) {
      this._owner._send({ type: "awareness_set", topic: this.topic, state: { ...this.own } }, (_result, error) => {
        if (error) this._owner._report(error);
      });
    }
    if (this._watching) this._owner._watch(this);
  }

  _disconnected() {
    this._live = false;
  }

  /**
   * The answer to this view's `awareness_watch`.
   *
   * @param {any} result
   * @param {HybridbusError | null} error
   */
  _watched(result, error) {
    if (error) {
      const openings = this._openings.splice(0);
      this._watching = false;
      this._live = false;
      if (openings.length) for (const opening of openings) opening.reject(error);
      else this._owner._report(error);
      this._changes?.end(error);
      return;
    }
    if (!this._watching || this._ended) {
      this._owner._unwatched(this); // unwatched while the watch was in flight
      return;
    }
    /** @type {Map<string, AwarenessState>} */
    const now = new Map();
    for (const c of result.clients ?? []) {
      if (this._isMine(c)) continue;
      now.set(c.client, { client: c.client, state: c.state, lamport: c.lamport, user: c.user ?? null });
    }
    /** @type {AwarenessChange[]} */
    const changes = [];
    for (const [client, old] of this._states) {
      if (!now.has(client)) changes.push(this._change({ ...old, state: {} }, true));
    }
    for (const [client, state] of now) {
      const old = this._states.get(client);
      if (!old || old.lamport !== state.lamport || !jsonEqual(old.state, state.state)) {
        changes.push(this._change(state, false));
      }
    }
    this._states = now;
    this._live = true;
    for (const change of changes) this._emit(change);
    for (const opening of this._openings.splice(0)) opening.resolve(this.states());
  }

  /** @param {any} push an `awareness` push of this topic */
  _pushed(push) {
    if (!this._live || this._ended) return;
    /** @type {AwarenessState} */
    const state = { client: push.client, state: push.state ?? {}, lamport: push.lamport, user: push.user ?? null };
    const removed = Boolean(push.removed);
    if (this._isMine(state)) return; // the server pushes none of this client's own
    if (removed) {
      if (!this._states.delete(push.client)) return; // one never reported
    } else {
      this._states.set(push.client, state);
    }
    this._emit(this._change(state, removed));
  }

  /**
   * The client ended: with `error`, or quietly (the application closed it).
   *
   * @param {HybridbusError} error
   * @param {boolean} quietly
   */
  _end(error, quietly) {
    if (this._ended) return;
    this._ended = true;
    this._stopWatch(error);
    this._changes?.end(quietly ? null : error);
  }
}
