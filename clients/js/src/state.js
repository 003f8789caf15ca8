/**
 * A state topic's document in the JavaScript client (docs/protocol.md §5.12, §6.10).
 *
 *     const doc = await client.stateTopic("boards/1");    // the document at once
 *     doc.on("change", ({ version, patch, document }) => render(document));
 *     await doc.patch({ title: "Q4" }, { ifVersion: doc.version });   // compare and set
 *
 * Owns: `StateTopic`, one subscribed topic's view: `document` and `version`,
 * kept by applying the server's `state` pushes in order (RFC 7396,
 * `mergepatch.js`), resumed on every new connection from the version held
 * (`since`: the server answers the patches after it, or a new snapshot when
 * it cannot — never a gap, never a repeat), the change listeners and the
 * iterator (every change in order; one that fell `queueSize` changes behind
 * is given the whole document once instead). Must not do I/O: the client's
 * collaboration views (`collab.js`) send its commands and feed it.
 *
 * @module
 */

import { Changes, Listeners } from "./changes.js";
import { jsonEqual, mergePatch } from "./mergepatch.js";

/**
 * @typedef {{topic: string, version: number, patch: any, document: any}} StateChange
 *   `patch` is null when the change is a whole new document (a snapshot)
 * @typedef {{resolve: (doc: StateTopic) => void, reject: (error: Error) => void}} Opening
 * @typedef {import("./collab.js").Collab} Collab
 * @typedef {import("./errors.js").HybridbusError} HybridbusError
 */

/** A state topic's document, kept current: `await client.stateTopic(topic)` (module docstring). */
export class StateTopic {
  /**
   * @param {Collab} owner
   * @param {string} topic
   * @param {number} queueSize
   */
  constructor(owner, topic, queueSize) {
    this._owner = owner;
    /** The topic, relative to the tenant. */
    this.topic = topic;
    /** The document at `version` (the server's starts as `{}` at version 0). @type {any} */
    this.document = null;
    /** The document's version: how many patches it took. */
    this.version = 0;
    this._queueSize = queueSize;
    /** @type {Listeners<StateChange>} */
    this._listeners = new Listeners((error) => owner._report(error));
    /** @type {Changes<StateChange>} */
    this._changes = new Changes();
    this._count = 0; // keys of the changes queue: every change its own
    this._opened = false; // the first subscribe was answered
    this._live = false; // a subscribe was answered on this connection: pushes follow it
    this._ended = false;
    /** @type {Opening | null} whoever awaits the first subscribe */
    this._opening = null;
    /** @type {Array<{version: number, resolve: () => void}>} patches waiting to be in `document` */
    this._waiters = [];
  }

  /** Whether the view was closed (or refused, or the client ended). */
  get ended() {
    return this._ended;
  }

  /**
   * Merge `patch` (RFC 7396) into the topic's document; resolves with the new version once
   * `document` holds it. `ifVersion`: only if the document is at that version (else 1640
   * `STATE_CONFLICT`); `lamport`: its place in Lamport order (1641 `PATCH_TOO_OLD`). Across a
   * drop an unanswered patch is sent again (merge patches are idempotent; with `ifVersion`
   * the second answer may be 1640 although the first went in: read `version`).
   *
   * @param {any} patch
   * @param {{ifVersion?: number, lamport?: number}} [options]
   * @returns {Promise<number>}
   */
  async patch(patch, options = {}) {
    const version = await this._owner.patch(this.topic, patch, options);
    if (this.version < version && !this._ended) {
      await new Promise((resolve) => this._waiters.push({ version, resolve: () => resolve(undefined) }));
    }
    return version;
  }

  /**
   * Listen to the document's changes ("change": `{topic, version, patch, document}`, `patch`
   * null when the whole document was replaced). Returns a function that removes the listener.
   *
   * @param {"change"} type
   * @param {(change: StateChange) => void} listener
   * @returns {() => void}
   */
  on(type, listener) {
    if (type !== "change") throw new TypeError(`a state document has no ${type} event`);
    return this._listeners.add(listener);
  }

  /**
   * @param {"change"} _type
   * @param {(change: StateChange) => void} listener
   */
  off(_type, listener) {
    this._listeners.delete(listener);
  }

  /** Unsubscribe: no more changes, the iterator is done; `client.stateTopic(topic)` subscribes anew. */
  async close() {
    if (this._ended) return;
    const live = this._live;
    this._owner._forget(this);
    this._end(null);
    if (live) await this._owner._quietly({ type: "state_unsubscribe", topic: this.topic });
  }

  /** @returns {AsyncIterator<StateChange>} */
  [Symbol.asyncIterator]() {
    return this;
  }

  /**
   * The next change, in version order (those since the subscribe first).
   *
   * @returns {Promise<IteratorResult<StateChange, undefined>>}
   */
  next() {
    return this._changes.next();
  }

  /**
   * Up to `limit` changes at once, waiting up to `wait` ms for the first (none: for ever).
   *
   * @param {number} [limit]
   * @param {number} [wait]
   * @returns {Promise<StateChange[]>}
   */
  take(limit = 100, wait) {
    return this._changes.take(limit, wait);
  }

  /**
   * Leaving a `for await` loop closes the view.
   *
   * @returns {Promise<IteratorResult<StateChange, undefined>>}
   */
  async return() {
    await this.close().catch(() => {});
    return { value: undefined, done: true };
  }

  // -- inside ------------------------------------------------------------------------------

  /**
   * The document is now `document` at `version`, by `patch` (null: replaced whole).
   *
   * @param {number} version
   * @param {any} patch
   * @param {any} document
   */
  _changed(version, patch, document) {
    this.document = document;
    this.version = version;
    /** @type {StateChange} */
    const change = { topic: this.topic, version, patch, document };
    this._listeners.emit(change);
    if (this._changes.size >= this._queueSize) {
      // The application fell behind: the whole document, once, instead of every patch.
      this._changes.clear();
      this._changes.put(++this._count, { ...change, patch: null });
    } else {
      this._changes.put(++this._count, change);
    }
    this._settled();
  }

  /** Resolve the `patch` calls whose version the document reached. */
  _settled() {
    if (!this._waiters.length) return;
    const version = this.version;
    const done = this._waiters.filter((w) => w.version <= version || this._ended);
    this._waiters = this._waiters.filter((w) => !done.includes(w));
    for (const waiter of done) waiter.resolve();
  }

  // -- fed by the client's collaboration views ----------------------------------------------

  /** What the next `state_subscribe` sends as `since` (null: none, a snapshot). */
  get since() {
    return this._opened ? this.version : null;
  }

  /** A new connection: the client subscribes again from `since`. */
  _disconnected() {
    this._live = false;
  }

  /**
   * The answer to this view's `state_subscribe`.
   *
   * @param {any} result
   * @param {HybridbusError | null} error
   */
  _subscribed(result, error) {
    if (error) {
      this._owner._forget(this);
      const opening = this._opening;
      this._end(error);
      if (opening) opening.reject(error);
      else this._owner._report(error);
      return;
    }
    if (this._ended) {
      this._owner._unsubscribed(this); // closed while the subscribe was in flight
      return;
    }
    this._live = true;
    // Members at their default are left out of the answer (a version 0, a null document).
    const version = result.version ?? 0;
    if (result.snapshot) {
      const document = result.document ?? null;
      const first = !this._opened;
      this._opened = true;
      if (first) {
        this.document = document;
        this.version = version;
        this._settled();
      } else if (version !== this.version || !jsonEqual(document, this.document)) {
        this._changed(version, null, document); // the server could not continue
      }
    } else {
      for (const [v, patch] of result.patches ?? []) this._apply(v, patch);
      if (this.version !== version) this._resync(); // not what §5.12 promises: start over
    }
    const opening = this._opening;
    this._opening = null;
    opening?.resolve(this);
  }

  /** @param {any} push a `state` push of this topic */
  _pushed(push) {
    if (!this._live || this._ended) return;
    if (push.snapshot) this._changed(push.version, null, push.document ?? null);
    else this._apply(push.version, push.patch ?? null); // (a null patch is left out)
  }

  /**
   * @param {number} version
   * @param {any} patch
   */
  _apply(version, patch) {
    if (version <= this.version) return; // seen already
    if (version !== this.version + 1) {
      this._resync(); // a change is missing: ask for what follows the version held
      return;
    }
    this._changed(version, patch, mergePatch(this.document, patch));
  }

  /** Subscribe again from the version held; pushes wait for the answer. */
  _resync() {
    this._live = false;
    this._owner._subscribe(this);
  }

  /**
   * The view ends: with `error`, or quietly (closed, or the client was closed).
   *
   * @param {Error | null} error
   */
  _end(error) {
    if (this._ended) return;
    this._ended = true;
    this._live = false;
    this._changes.end(error);
    this._settled();
  }
}
