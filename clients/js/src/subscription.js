/**
 * One subscription of the JavaScript client, across its connections.
 *
 * Owns: what the application receives of one pattern (an async iterator, or
 * the `onEvent` callback), the exactly-once check of docs/protocol.md §7 on
 * each push (drop what the current connection's subscription already passed),
 * the resume token the client resubscribes from after a reconnect, gaps
 * (`recovered: false` on a resubscribe: `CONTINUITY_LOST` once, at the gap),
 * the members of a watched topic (`presence: true`), and how it ends. Must
 * not do I/O: the client (`client.js`) sends its `subscribe` commands and
 * feeds it what the server pushes.
 *
 * @module
 */

import { ErrorCode, HybridbusError } from "./errors.js";
import { Inbox } from "./inbox.js";
import { formatToken, parseToken } from "./position.js";

/**
 * @typedef {import("./position.js").Position} Position
 * @typedef {Record<string, any>} CloudEvent
 * @typedef {{pattern: string, topic: string, offset: number, shard: number, position: number,
 *            event: CloudEvent, token: string}} Delivery
 */

export class Subscription {
  /**
   * @param {{_unsubscribe(sub: Subscription): Promise<void>, _report(error: Error): void}} owner
   * @param {string} pattern
   * @param {any} options the `subscribe` options (index.d.ts: SubscribeOptions)
   * @param {number} queueSize
   */
  constructor(owner, pattern, options, queueSize) {
    this._owner = owner;
    /** The pattern, as subscribed (relative to the tenant). */
    this.pattern = pattern;
    /** The server-side filter, sent with every (re)subscribe. */
    this.filter = options.filter ?? null;
    /** Whether the members of this topic are watched (`members`). */
    this.presence = Boolean(options.presence);
    /**
     * The resume token after the last event received (queued ones included), or where the
     * subscription started: subscribe from it to continue exactly here.
     *
     * @type {string | null}
     */
    this.position = null;
    /** False for good once continuity was lost (a gap was reported). */
    this.recovered = true;
    /** @type {Map<string, any> | null} the topic's members by client id (with `presence`) */
    this.members = this.presence ? new Map() : null;
    this._since = options.since ?? null;
    this._onEvent = options.onEvent ?? null;
    this._onGap = options.onGap ?? null;
    this._onPresence = options.onPresence ?? null;
    this._onEnd = options.onEnd ?? null;
    this._queueSize = queueSize;
    /** @type {Inbox<Delivery> | null} */
    this._inbox = this._onEvent ? null : new Inbox();
    /** @type {number[] | null} the current connection's positions (null: no reply yet) */
    this._positions = null;
    this._epoch = "";
    this._ended = false;
    this._opened = false;
    this._waitingForStart = false; // since "earliest": the start is being asked for
    /** @type {(result: any) => void} */
    let resolve = () => {};
    /** @type {(error: Error) => void} */
    let reject = () => {};
    /** Resolves with the first subscribe reply (`{epoch, position, recovered}`), or rejects. */
    this.ready = new Promise((ok, fail) => {
      resolve = ok;
      reject = fail;
    });
    this.ready.catch(() => {}); // an application that never awaits it must not see a rejection
    this._resolve = resolve;
    this._reject = reject;
  }

  /** Whether the subscription ended (unsubscribed, refused, or the client closed). */
  get ended() {
    return this._ended;
  }

  // -- fed by the client ---------------------------------------------------------------

  /** The token the next `subscribe` sends as `since` (null: none). */
  get since() {
    return this.position ?? this._since;
  }

  /** The connection ended: pushes are dropped until the next subscribe reply. */
  _disconnected() {
    this._positions = null;
  }

  /**
   * The reply to a subscribe of this subscription.
   *
   * @param {{epoch: string, position: string, recovered: boolean}} result
   */
  _subscribed(result) {
    const parsed = parseToken(result.position);
    if (parsed === null) throw new HybridbusError(ErrorCode.MALFORMED_MESSAGE, `bad position ${result.position}`);
    const resumed = this.since !== null;
    this._positions = parsed.positions;
    this._epoch = parsed.epoch;
    const mine = this.position === null ? null : parseToken(this.position);
    if (mine === null || mine.epoch !== parsed.epoch) this.position = result.position;
    if (resumed && !result.recovered) {
      this._gap("the server could not recover every event since the last one received");
    }
    if (!this._opened) {
      this._opened = true;
      this._resolve(result);
    }
  }

  /**
   * An `event` push for this pattern; false if it breaks the protocol (a shard the token
   * does not have).
   *
   * @param {any} push
   * @returns {boolean}
   */
  _received(push) {
    const positions = this._positions;
    if (positions === null || this._ended) return true; // before the reply, or ending
    const { shard, position } = push;
    if (!(Number.isInteger(shard) && shard >= 0 && shard < positions.length)) return false;
    if (position <= positions[shard]) return true; // seen already (history and live overlapped)
    positions[shard] = position;
    const token = formatToken({ epoch: this._epoch, positions });
    this.position = token;
    /** @type {Delivery} */
    const delivery = {
      pattern: push.pattern,
      topic: push.topic,
      offset: push.offset,
      shard,
      position,
      event: push.event,
      token,
    };
    if (this._onEvent) {
      try {
        this._onEvent(delivery);
      } catch (error) {
        this._owner._report(/** @type {Error} */ (error));
      }
    } else if (this._inbox) {
      if (this._inbox.size >= this._queueSize) {
        const why = `the application fell ${this._queueSize} events behind on ${this.pattern}`;
        this._end(new HybridbusError(ErrorCode.SUBSCRIBER_TOO_SLOW, why));
        this._owner._unsubscribe(this).catch(() => {});
        return true;
      }
      this._inbox.put(delivery);
    }
    return true;
  }

  /** @param {string} reason */
  _gap(reason) {
    this.recovered = false;
    const error = new HybridbusError(ErrorCode.CONTINUITY_LOST, reason, { retriable: false });
    if (this._onGap) this._onGap(error);
    else if (this._inbox) this._inbox.raise(error);
    else this._owner._report(error);
  }

  /**
   * A presence result or push for the watched topic.
   *
   * @param {any} message `{clients}` (a presence result) or a join/leave/presence push
   */
  _presence(message) {
    const members = this.members;
    if (members === null) return;
    if (Array.isArray(message.clients)) {
      members.clear();
      for (const info of message.clients) members.set(info.client, info);
    } else if (message.type === "leave") {
      members.delete(message.info.client);
    } else {
      members.set(message.info.client, message.info);
    }
    if (this._onPresence) {
      try {
        this._onPresence(message, members);
      } catch (error) {
        this._owner._report(/** @type {Error} */ (error));
      }
    }
  }

  /**
   * The subscription ends (with `error`, or quietly).
   *
   * @param {Error | null} [error]
   */
  _end(error = null) {
    if (this._ended) return;
    this._ended = true;
    if (!this._opened) this._reject(error ?? new HybridbusError(ErrorCode.SUBSCRIPTION_ENDED, "unsubscribed"));
    this._inbox?.end(error);
    if (this._onEnd) this._onEnd(error);
    else if (error && this._onEvent) this._owner._report(error);
  }

  // -- the application's side -------------------------------------------------------------

  /** Stop receiving; resolves once the server answered (or at once between connections). */
  async unsubscribe() {
    await this._owner._unsubscribe(this);
  }

  /**
   * Up to `limit` deliveries at once, waiting up to `wait` ms for the first (none: for ever);
   * rejects at a gap (once) and with the error the subscription ended with.
   *
   * @param {number} [limit]
   * @param {number} [wait]
   * @returns {Promise<Delivery[]>}
   */
  take(limit = 100, wait) {
    if (this._inbox === null) {
      return Promise.reject(new TypeError("a subscription with onEvent is not iterable"));
    }
    return this._inbox.take(limit, wait);
  }

  /** @returns {AsyncIterator<Delivery>} */
  [Symbol.asyncIterator]() {
    return this;
  }

  /** @returns {Promise<IteratorResult<Delivery, undefined>>} */
  next() {
    if (this._inbox === null) {
      return Promise.reject(new TypeError("a subscription with onEvent is not iterable"));
    }
    return this._inbox.next();
  }

  /**
   * Leaving a `for await` loop (break, return, a throw in its body) unsubscribes.
   *
   * @returns {Promise<IteratorResult<Delivery, undefined>>}
   */
  async return() {
    await this.unsubscribe().catch(() => {});
    return { value: undefined, done: true };
  }
}
