/**
 * What the application iterates of an awareness or state view: a keyed queue with an end.
 *
 * Owns: the changes waiting for the application, at most one per key (a
 * change put under a key already waiting replaces it and goes to the end: an
 * awareness view keys by client, so a slow reader gets each client's newest
 * state), emptying it (a state view that fell too far behind starts over with
 * the whole document), and how it ends (quietly, or with an error every later
 * `next()` rejects with); and `Listeners`, the views' `on("change")` callbacks.
 * Must not know about connections: the views feed both.
 *
 * @module
 */

import { Waiting } from "./inbox.js";

/**
 * @template T
 */
export class Changes extends Waiting {
  constructor() {
    super();
    /** @type {Map<unknown, T>} */
    this._items = new Map();
  }

  /** How many changes wait for the application. */
  get size() {
    return this._items.size;
  }

  /**
   * @param {unknown} key
   * @param {T} item
   */
  put(key, item) {
    if (this._ended) return;
    this._items.delete(key);
    this._items.set(key, item);
    this._wake();
  }

  /** Forget what waits. */
  clear() {
    this._items.clear();
  }

  /** @returns {T | undefined} the first change waiting, taken out */
  _shift() {
    const first = this._items.entries().next();
    if (first.done) return undefined;
    this._items.delete(first.value[0]);
    return first.value[1];
  }

  /** @returns {Promise<IteratorResult<T, undefined>>} */
  async next() {
    while (true) {
      if (this._items.size) return { value: /** @type {T} */ (this._shift()), done: false };
      if (this._ended) {
        if (this._error) throw this._error;
        return { value: undefined, done: true };
      }
      await this._changed();
    }
  }

  /**
   * Up to `limit` changes at once, waiting up to `wait` ms for the first (undefined: for
   * ever). Rejects with the ending error once empty.
   *
   * @param {number} limit
   * @param {number} [wait]
   * @returns {Promise<T[]>}
   */
  async take(limit, wait) {
    if (!this._items.size && !this._ended) await this._changed(wait);
    if (!this._items.size && this._error) throw this._error;
    /** @type {T[]} */
    const out = [];
    while (out.length < limit && this._items.size) out.push(/** @type {T} */ (this._shift()));
    return out;
  }
}

/**
 * The callbacks of a view's `on("change", listener)`; a listener that throws is reported,
 * and the others are still called.
 *
 * @template T
 */
export class Listeners {
  /** @param {(error: Error) => void} report */
  constructor(report) {
    this._report = report;
    /** @type {Set<(value: T) => void>} */
    this._set = new Set();
  }

  /** Whether any listener is registered. */
  get size() {
    return this._set.size;
  }

  /**
   * @param {(value: T) => void} listener
   * @returns {() => void} removes the listener
   */
  add(listener) {
    this._set.add(listener);
    return () => this.delete(listener);
  }

  /** @param {(value: T) => void} listener */
  delete(listener) {
    this._set.delete(listener);
  }

  /** @param {T} value */
  emit(value) {
    for (const listener of [...this._set]) {
      try {
        listener(value);
      } catch (error) {
        this._report(/** @type {Error} */ (error));
      }
    }
  }
}
