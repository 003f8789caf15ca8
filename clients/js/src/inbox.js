/**
 * What an application iterates: a queue with an end, as an async iterator.
 *
 * Owns: items waiting for the application, the one-shot errors placed between
 * them (a gap: `next()` rejects once at that point, the items after it follow),
 * and how a queue ends (quietly, or with an error every later `next()` rejects
 * with: `Waiting`, which `changes.js` shares). Must not know about connections: subscriptions and groups
 * feed it.
 *
 * @module
 */

const RAISE = Symbol("raise");

/**
 * @param {unknown} item
 * @returns {item is {[RAISE]: Error}}
 */
function isRaise(item) {
  return item !== null && typeof item === "object" && RAISE in item;
}

/**
 * The waiting and ending an application's queues share (`Inbox`, and the keyed
 * `Changes` of awareness and state views): who waits for the next item, and the end.
 */
export class Waiting {
  constructor() {
    /** @type {Array<() => void>} */
    this._wakers = [];
    this._ended = false;
    /** @type {Error | null} */
    this._error = null;
  }

  /** Whether the queue ended (the items still in it can be read). */
  get ended() {
    return this._ended;
  }

  /**
   * End the queue: what is in it is still read, then `next()` rejects with `error`
   * (or is done, without one).
   *
   * @param {Error | null} [error]
   */
  end(error = null) {
    if (this._ended) return;
    this._ended = true;
    this._error = error;
    this._wake();
  }

  _wake() {
    for (const wake of this._wakers.splice(0)) wake();
  }

  /**
   * Resolves when something was put or the queue ended, or after `wait` ms.
   *
   * @param {number} [wait]
   * @returns {Promise<void>}
   */
  _changed(wait) {
    return new Promise((resolve) => {
      /** @type {ReturnType<typeof setTimeout> | undefined} */
      let timer;
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      this._wakers.push(wake);
      if (wait !== undefined) {
        timer = setTimeout(() => {
          this._wakers = this._wakers.filter((w) => w !== wake);
          resolve();
        }, wait);
      }
    });
  }
}

/**
 * @template T
 */
export class Inbox extends Waiting {
  constructor() {
    super();
    /** @type {unknown[]} */
    this._items = [];
  }

  /** How many items wait for the application. */
  get size() {
    return this._items.length;
  }

  /** @param {T} item */
  put(item) {
    if (this._ended) return;
    this._items.push(item);
    this._wake();
  }

  /**
   * `next()` rejects with `error` once, at this point of the queue.
   *
   * @param {Error} error
   */
  raise(error) {
    if (this._ended) return;
    this._items.push({ [RAISE]: error });
    this._wake();
  }

  /** @returns {Promise<IteratorResult<T, undefined>>} */
  async next() {
    while (true) {
      if (this._items.length) {
        const item = this._items.shift();
        if (isRaise(item)) throw item[RAISE];
        return { value: /** @type {T} */ (item), done: false };
      }
      if (this._ended) {
        if (this._error) throw this._error;
        return { value: undefined, done: true };
      }
      await this._changed();
    }
  }

  /**
   * Up to `limit` items at once, waiting up to `wait` ms for the first (undefined: for
   * ever). Rejects at a gap placed first, and with the ending error once empty.
   *
   * @param {number} limit
   * @param {number} [wait]
   * @returns {Promise<T[]>}
   */
  async take(limit, wait) {
    if (!this._items.length && !this._ended) await this._changed(wait);
    if (this._items.length && isRaise(this._items[0])) {
      throw /** @type {{[RAISE]: Error}} */ (this._items.shift())[RAISE];
    }
    if (!this._items.length && this._error) throw this._error;
    /** @type {T[]} */
    const out = [];
    while (out.length < limit && this._items.length && !isRaise(this._items[0])) {
      out.push(/** @type {T} */ (this._items.shift()));
    }
    return out;
  }
}
