/**
 * The subscriptions and consumer-group memberships of one client, across its connections.
 *
 * Owns: the client's subscriptions by pattern and memberships by group name;
 * sending `subscribe` (from each subscription's resume token) and `group_join`
 * (as the same member, with the same pattern and settings) at once if
 * connected, else on the next connection, and again after every reconnect;
 * the presence watch of subscriptions with `presence: true`; matching replies
 * and refusals to them; handing pushes to them (`event`, `group_event`,
 * `join`/`leave`/`presence`); resubscribing one the server ended with 1200 or
 * 1201 (§6.2) and joining again a group whose coordinator moved (1405); ending
 * them all when the client fails. Must not do I/O: it sends through `Link`,
 * the client's current connection.
 *
 * @module
 */

import { ErrorCode, HybridbusError } from "./errors.js";
import { Group } from "./group.js";
import { Subscription } from "./subscription.js";

/**
 * @typedef {object} Link what the registry needs from the client
 * @property {() => boolean} live whether a connection's connect was answered
 * @property {(message: Record<string, any>) => number} send queue a command; its id
 * @property {(message: Record<string, any>, options?: {replay?: boolean}) => Promise<any>} request
 *   a command whose answer is awaited (sent again after a drop unless `replay` is false)
 * @property {(error: Error) => void} report an error nobody awaits
 * @property {(change: any) => void} presence a join/leave/presence push
 * @property {() => HybridbusError | null} failure what ended the client, if anything did
 * @property {number} timeout ms to wait for an answer
 * @property {number} queueSize events an iterated subscription may hold
 */

/** @typedef {{resolve: (group: Group) => void, reject: (error: Error) => void}} Opening */

export class Registry {
  /** @param {Link} link */
  constructor(link) {
    this._link = link;
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    /** @type {Map<number, Subscription>} by the id of their subscribe */
    this._subscribing = new Map();
    /** @type {Map<number, Subscription>} by the id of their presence watch */
    this._watching = new Map();
    /** @type {Map<string, Group>} */
    this._groups = new Map();
    /** @type {Map<number, {group: Group, opening: Opening | null}>} by the id of their join */
    this._joining = new Map();
  }

  // -- the application's side (through the client) ----------------------------------------

  /**
   * @param {string} pattern
   * @param {any} options index.d.ts: SubscribeOptions
   * @returns {Subscription}
   */
  subscribe(pattern, options) {
    const link = this._link;
    const sub = new Subscription(this, pattern, options, link.queueSize);
    const failure = link.failure();
    if (failure) {
      sub._end(failure);
      return sub;
    }
    if (this._subs.has(pattern)) {
      sub._end(new HybridbusError(ErrorCode.ALREADY_SUBSCRIBED, `already subscribed to ${pattern} on this client`));
      return sub;
    }
    this._subs.set(pattern, sub);
    const timer = setTimeout(() => {
      this._drop(sub);
      sub._end(new HybridbusError(ErrorCode.DISCONNECTED, `no subscribe reply within ${link.timeout} ms`));
    }, link.timeout);
    const done = () => clearTimeout(timer);
    sub.ready.then(done, done);
    if (options.since === "latest") sub._since = null;
    if (options.since === "earliest") {
      // Where retained history starts: a history page of no events says it.
      sub._since = null;
      sub._waitingForStart = true;
      const history = { type: "history", pattern, limit: 0, ...(options.filter ? { filter: options.filter } : {}) };
      link.request(history).then(
        (page) => {
          if (this._subs.get(pattern) !== sub) return;
          sub._since = page.position;
          sub._waitingForStart = false;
          if (link.live()) this._subscribe(sub);
        },
        (error) => {
          this._drop(sub);
          sub._end(error);
        },
      );
    } else if (link.live()) {
      this._subscribe(sub);
    }
    return sub;
  }

  /**
   * Unsubscribe (the Subscription's `unsubscribe`, or leaving its loop).
   *
   * @param {Subscription} sub
   */
  async _unsubscribe(sub) {
    const open = this._subs.get(sub.pattern) === sub && sub._positions !== null;
    this._drop(sub);
    sub._end();
    if (open && this._link.live()) {
      try {
        await this._link.request({ type: "unsubscribe", pattern: sub.pattern }, { replay: false });
      } catch (error) {
        // Not subscribed (any more) on the server, or the connection ended: either way, gone.
        if (!(error instanceof HybridbusError)) throw error;
      }
    }
  }

  /** @param {Error} error an error of a subscription nobody awaits */
  _report(error) {
    this._link.report(error);
  }

  /**
   * @param {string} name
   * @param {string | null} pattern
   * @param {Record<string, any>} options `member` and the group's settings
   * @returns {Promise<Group>}
   */
  group(name, pattern, options) {
    const link = this._link;
    const failure = link.failure();
    if (failure) return Promise.reject(failure);
    if (this._groups.has(name)) {
      return Promise.reject(new HybridbusError(ErrorCode.ALREADY_SUBSCRIBED, `already a member of ${name} on this client`));
    }
    const { member = null, ...settings } = options;
    const group = new Group(this, name, pattern, member, Object.keys(settings).length ? settings : null);
    this._groups.set(name, group);
    return new Promise((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (this._groups.get(name) === group) this._groups.delete(name);
        for (const [id, joining] of this._joining) if (joining.group === group) this._joining.delete(id);
        const error = new HybridbusError(ErrorCode.DISCONNECTED, `no group_join reply within ${link.timeout} ms`);
        group._end(error);
        settled = true;
        reject(error);
      }, link.timeout);
      const settle = (/** @type {() => void} */ how) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        how();
      };
      group._opening = {
        resolve: (/** @type {Group} */ g) => settle(() => resolve(g)),
        reject: (/** @type {Error} */ e) => settle(() => reject(e)),
      };
      if (link.live()) this._join(group);
    });
  }

  /**
   * A settling command of a group (ack, nack, extend, term).
   *
   * @param {Record<string, any>} message
   */
  _request(message) {
    return this._link.request(message);
  }

  /** @param {Group} group */
  async _leave(group) {
    const member = this._groups.get(group.name) === group;
    if (member) this._groups.delete(group.name);
    group._end();
    if (member && this._link.live()) {
      try {
        await this._link.request({ type: "group_leave", group: group.name }, { replay: false });
      } catch (error) {
        if (!(error instanceof HybridbusError)) throw error;
      }
    }
  }

  // -- sending --------------------------------------------------------------------------

  /** @param {Subscription} sub */
  _subscribe(sub) {
    if (sub._waitingForStart) return;
    /** @type {Record<string, any>} */
    const message = { type: "subscribe", pattern: sub.pattern };
    const since = sub.since;
    if (since) message.since = since;
    if (sub.filter) message.filter = sub.filter;
    this._subscribing.set(this._link.send(message), sub);
  }

  /** @param {Group} group */
  _join(group) {
    /** @type {Record<string, any>} */
    const message = { type: "group_join", group: group.name };
    if (group.pattern) message.pattern = group.pattern;
    if (group.settings) message.settings = group.settings;
    if (group.member) message.member = group.member;
    const opening = group._opening;
    group._opening = null;
    this._joining.set(this._link.send(message), { group, opening });
  }

  /** @param {Subscription} sub */
  _drop(sub) {
    if (this._subs.get(sub.pattern) === sub) this._subs.delete(sub.pattern);
  }

  // -- fed by the client ----------------------------------------------------------------

  /** A new connection: subscribe again, each from its token; join again, as the same member. */
  connected() {
    for (const sub of this._subs.values()) this._subscribe(sub);
    for (const group of this._groups.values()) this._join(group);
  }

  /** The connection ended: what was in flight is sent again on the next one. */
  disconnected() {
    this._subscribing.clear();
    this._watching.clear();
    // A first join in flight: whoever awaits it waits for the join on the next connection.
    for (const { group, opening } of this._joining.values()) if (opening) group._opening = opening;
    this._joining.clear();
    for (const sub of this._subs.values()) sub._disconnected();
  }

  /**
   * The answer to command `id`, if it was the registry's: true then.
   *
   * @param {number} id
   * @param {any} result
   * @param {HybridbusError | null} error
   * @returns {boolean}
   */
  replied(id, result, error) {
    const sub = this._subscribing.get(id);
    if (sub) {
      this._subscribing.delete(id);
      if (error) {
        this._drop(sub);
        sub._end(error);
      } else if (this._subs.get(sub.pattern) !== sub) {
        // Unsubscribed while the subscribe was in flight: undo it on the server too.
        this._link.request({ type: "unsubscribe", pattern: sub.pattern }, { replay: false }).catch(() => {});
      } else {
        sub._subscribed(result);
        if (sub.presence) this._watching.set(this._link.send({ type: "presence", topic: sub.pattern, watch: true }), sub);
      }
      return true;
    }
    const watched = this._watching.get(id);
    if (watched) {
      this._watching.delete(id);
      if (error) this._link.report(error);
      else watched._presence(result);
      return true;
    }
    const joining = this._joining.get(id);
    if (joining) {
      this._joining.delete(id);
      const { group, opening } = joining;
      if (error) {
        if (this._groups.get(group.name) === group) this._groups.delete(group.name);
        group._end(error);
        if (opening) opening.reject(error);
        else this._link.report(error);
      } else {
        group._joined(result);
        opening?.resolve(group);
      }
      return true;
    }
    return false;
  }

  /**
   * A push; returns why it breaks the protocol, if it does.
   *
   * @param {any} m
   * @returns {string | null}
   */
  pushed(m) {
    switch (m.type) {
      case "event": {
        const sub = this._subs.get(m.pattern); // none: in flight while unsubscribing
        if (sub && !sub._received(m)) return `a push for shard ${m.shard}, which the subscription's token does not have`;
        return null;
      }
      case "group_event":
        this._groups.get(m.group)?._deliver(m);
        return null;
      case "unsubscribed":
        this._unsubscribed(m);
        return null;
      case "group_left":
        this._groupLeft(m);
        return null;
      case "join":
      case "leave":
      case "presence":
        for (const sub of this._subs.values()) if (sub.presence && sub.pattern === m.topic) sub._presence(m);
        this._link.presence(m);
        return null;
      default:
        return null; // a newer server's message: skip it (§3.2)
    }
  }

  /** @param {any} m an `unsubscribed` push */
  _unsubscribed(m) {
    const sub = this._subs.get(m.pattern);
    if (!sub) return;
    sub._disconnected();
    if (m.code === ErrorCode.SUBSCRIPTION_ENDED || m.code === ErrorCode.SUBSCRIBER_TOO_SLOW) {
      this._subscribe(sub); // again from its token: nothing retained is lost
    } else {
      this._drop(sub);
      sub._end(new HybridbusError(m.code, m.reason ?? "", { retriable: false }));
    }
  }

  /** @param {any} m a `group_left` push */
  _groupLeft(m) {
    const group = this._groups.get(m.group);
    if (!group) return;
    if (m.code === ErrorCode.NOT_COORDINATOR) {
      // Another node took the group over: join again, after its lease had time to move.
      setTimeout(() => {
        if (this._groups.get(group.name) === group && this._link.live()) this._join(group);
      }, 200);
      return;
    }
    this._groups.delete(m.group);
    group._end(new HybridbusError(m.code, m.reason ?? "", { retriable: false }));
  }

  /**
   * The client ended: everything ends, with `error` (or quietly: the application closed it).
   *
   * @param {HybridbusError} error
   * @param {boolean} quietly
   */
  failAll(error, quietly) {
    for (const sub of this._subs.values()) sub._end(quietly ? null : error);
    this._subs.clear();
    for (const { group, opening } of this._joining.values()) {
      group._end(quietly ? null : error);
      opening?.reject(error);
    }
    this._joining.clear();
    for (const group of this._groups.values()) {
      group._opening?.reject(error);
      group._end(quietly ? null : error);
    }
    this._groups.clear();
  }
}

