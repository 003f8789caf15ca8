/**
 * Consumer groups in the JavaScript client (docs/protocol.md §5.9, docs/groups.md).
 *
 *     const g = await client.group("billing", "invoices/#", { ack_wait: 10 });
 *     for await (const d of g) { handle(d.event); await d.ack(); }
 *
 * Owns: `Group` (one membership: the deliveries the application iterates or
 * takes, its member name, and acks of one turn sent as one `ack` command) and
 * `GroupDelivery` (one delivery and its settling: `ack`, `nack`, `extend`,
 * `term`). Must not do I/O: the client (`client.js`) sends `group_join` (again
 * after every reconnect, as the same member with the same pattern and
 * settings) and the settling commands, which it sends again after a drop
 * (acking twice is harmless; a `nack`, `extend` or `term` of a delivery whose
 * lease ended meanwhile is refused with 1403 `DELIVERY_GONE`).
 *
 * @module
 */

import { Inbox } from "./inbox.js";

const MAX_SETTLE_IDS = 1000;

/**
 * @typedef {{
 *   _request(message: Record<string, any>): Promise<any>,
 *   _leave(group: Group): Promise<void>,
 * }} GroupOwner
 */

/** One delivery of a group's event; settle it with `ack`, `nack`, `extend` or `term`. */
export class GroupDelivery {
  /**
   * @param {Group} group
   * @param {any} push a `group_event` push
   */
  constructor(group, push) {
    this.group = group;
    /** The delivery id: settles it from any connection. @type {string} */
    this.id = push.delivery;
    /** Which delivery of the event to the group this is, from 1. @type {number} */
    this.attempt = push.attempt;
    /** The same on every delivery of one event: what an idempotent handler remembers. @type {string} */
    this.dedupe = push.dedupe;
    /** @type {string} */
    this.topic = push.topic;
    /** @type {number} */
    this.offset = push.offset;
    /** The CloudEvent. @type {Record<string, any>} */
    this.event = push.event;
  }

  /** The event was handled: the group never delivers it again. Durable once resolved. */
  ack() {
    return this.group.ack(this);
  }

  /**
   * Handling failed: deliver it again after `delay` seconds (none: the group's backoff).
   *
   * @param {{delay?: number, error?: string}} [options]
   */
  async nack(options = {}) {
    /** @type {Record<string, any>} */
    const message = { type: "nack", group: this.group.name, delivery: this.id };
    if (options.delay !== undefined) message.delay = options.delay;
    if (options.error) message.error = options.error;
    await this.group._owner._request(message);
  }

  /** The handler needs more time: the lease starts over (`ack_wait` from now). */
  async extend() {
    await this.group._owner._request({ type: "extend", group: this.group.name, deliveries: [this.id] });
  }

  /**
   * Give up on the event now: it goes to the group's dead letters.
   *
   * @param {string} [reason]
   */
  async term(reason) {
    /** @type {Record<string, any>} */
    const message = { type: "term", group: this.group.name, delivery: this.id };
    if (reason) message.reason = reason;
    await this.group._owner._request(message);
  }
}

/** A membership of a consumer group: `for await (const d of g)`, or `await g.take(n, wait)`. */
export class Group {
  /**
   * @param {GroupOwner} owner
   * @param {string} name
   * @param {string | null} pattern
   * @param {string | null} member
   * @param {Record<string, any> | null} settings
   */
  constructor(owner, name, pattern, member, settings) {
    this._owner = owner;
    /** The group's name, as joined. */
    this.name = name;
    /** The group's pattern (relative), once joined. @type {string | null} */
    this.pattern = pattern;
    /** The member's name, once joined: the rejoins after a reconnect keep it. @type {string | null} */
    this.member = member;
    /** The settings sent with every join. */
    this.settings = settings;
    /** @type {Inbox<GroupDelivery>} */
    this._inbox = new Inbox();
    /** @type {string[]} */
    this._acks = [];
    /** @type {Promise<void> | null} */
    this._acked = null;
    this._ended = false;
    /** @type {{resolve: (group: Group) => void, reject: (error: Error) => void} | null} whoever awaits the first join */
    this._opening = null;
  }

  /** Whether the membership ended (left, refused, or the client closed). */
  get ended() {
    return this._ended;
  }

  /** @param {any} push */
  _deliver(push) {
    if (!this._ended) this._inbox.put(new GroupDelivery(this, push));
  }

  /** @param {{member: string, pattern: string}} result */
  _joined(result) {
    this.member = result.member;
    this.pattern = result.pattern;
  }

  /** @param {Error | null} [error] */
  _end(error = null) {
    if (this._ended) return;
    this._ended = true;
    this._inbox.end(error);
  }

  /**
   * Ack deliveries of this group; resolves once the server made the acks durable. Every ack
   * asked for in one turn of the event loop goes out in one `ack` command (up to 1000 ids).
   *
   * @param {...GroupDelivery} deliveries
   * @returns {Promise<void>}
   */
  ack(...deliveries) {
    if (!deliveries.length) return Promise.resolve();
    this._acks.push(...deliveries.map((d) => d.id));
    if (this._acked === null) {
      this._acked = Promise.resolve().then(() => this._sendAcks());
    }
    return this._acked;
  }

  async _sendAcks() {
    const ids = this._acks;
    this._acks = [];
    this._acked = null;
    const commands = [];
    for (let start = 0; start < ids.length; start += MAX_SETTLE_IDS) {
      const deliveries = ids.slice(start, start + MAX_SETTLE_IDS);
      commands.push(this._owner._request({ type: "ack", group: this.name, deliveries }));
    }
    await Promise.all(commands);
  }

  /**
   * Up to `limit` deliveries, waiting up to `wait` ms for the first (none: for ever).
   *
   * @param {number} [limit]
   * @param {number} [wait]
   * @returns {Promise<GroupDelivery[]>}
   */
  take(limit = 100, wait) {
    return this._inbox.take(limit, wait);
  }

  /** Leave the group; deliveries held and not settled come back to it when their lease ends. */
  async leave() {
    await this._owner._leave(this);
  }

  /** @returns {AsyncIterator<GroupDelivery>} */
  [Symbol.asyncIterator]() {
    return this;
  }

  /** @returns {Promise<IteratorResult<GroupDelivery, undefined>>} */
  next() {
    return this._inbox.next();
  }

  /**
   * Leaving a `for await` loop leaves the group.
   *
   * @returns {Promise<IteratorResult<GroupDelivery, undefined>>}
   */
  async return() {
    await this.leave().catch(() => {});
    return { value: undefined, done: true };
  }
}
