/**
 * The awareness and state-topic views of one client, across its connections.
 *
 * Owns: the client's awareness views (`awareness.js`, one per topic) and
 * state documents (`state.js`, one per topic); sending their watches and
 * subscribes at once if connected, else on the next connection, and again
 * after every reconnect — before the commands a drop left unanswered, so a
 * replayed `awareness_set` lands after the state set again, and a replayed
 * `state_patch` after the resubscribe; matching the answers to those commands
 * (in the same turn as the pushes after them, never a microtask later: a
 * reply and the push behind it in one frame are taken in order); routing the
 * `awareness` and `state` pushes; `state_patch`; ending the views when the
 * client fails. Must not do I/O: it sends through `Link`, the client's
 * current connection.
 *
 * @module
 */

import { Awareness } from "./awareness.js";
import { ErrorCode, HybridbusError } from "./errors.js";
import { StateTopic } from "./state.js";

/** @typedef {{replay?: boolean, answered?: (result: any) => void}} RequestOptions */

/**
 * @typedef {object} Link what the views need from the client
 * @property {() => boolean} live whether a connection's connect was answered
 * @property {(message: Record<string, any>) => number} send queue a command on the live connection; its id
 * @property {(message: Record<string, any>, options?: RequestOptions) => Promise<any>} request
 *   a command whose answer is awaited (sent again after a drop unless `replay` is false;
 *   `answered` sees the result in the turn it arrived in)
 * @property {(error: Error) => void} report an error nobody awaits
 * @property {() => HybridbusError | null} failure what ended the client, if anything did
 * @property {() => string | null} self this client's presence id (the connect reply's `client`,
 *   which names its awareness states; kept by a resumed session)
 * @property {number} timeout ms to wait for an answer
 * @property {number} queueSize changes a state document's iterator holds
 */

/** @typedef {(result: any, error: HybridbusError | null) => void} Answer */

export class Collab {
  /** @param {Link} link */
  constructor(link) {
    this._link = link;
    this._timeout = link.timeout;
    /** @type {Map<string, Awareness>} */
    this._awareness = new Map();
    /** @type {Map<string, StateTopic>} */
    this._states = new Map();
    /** @type {Map<number, Answer>} by the id of the command on this connection */
    this._answers = new Map();
  }

  // -- the application's side (through the client) ----------------------------------------

  /**
   * The awareness view of `topic` (one per topic: the same until it is closed).
   *
   * @param {string} topic
   * @returns {Awareness}
   */
  awareness(topic) {
    let view = this._awareness.get(topic);
    if (!view) {
      view = new Awareness(this, topic);
      const failure = this._link.failure();
      if (failure) view._end(failure, false);
      else this._awareness.set(topic, view);
    }
    return view;
  }

  /**
   * Subscribe to the state document of `topic`; resolves once the server answered.
   *
   * @param {string} topic
   * @returns {Promise<StateTopic>}
   */
  state(topic) {
    const link = this._link;
    const failure = link.failure();
    if (failure) return Promise.reject(failure);
    if (this._states.has(topic)) {
      const why = `already subscribed to the state of ${topic} on this client`;
      return Promise.reject(new HybridbusError(ErrorCode.ALREADY_SUBSCRIBED, why));
    }
    const doc = new StateTopic(this, topic, link.queueSize);
    this._states.set(topic, doc);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._forget(doc);
        const error = new HybridbusError(ErrorCode.DISCONNECTED, `no state_subscribe reply within ${link.timeout} ms`);
        doc._opening = null;
        doc._end(error);
        reject(error);
      }, link.timeout);
      doc._opening = {
        resolve: (d) => {
          clearTimeout(timer);
          resolve(d);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this._subscribe(doc);
    });
  }

  /**
   * Merge `patch` into `topic`'s document; resolves with its new version.
   *
   * @param {string} topic
   * @param {any} patch
   * @param {{ifVersion?: number, lamport?: number}} options
   * @returns {Promise<number>}
   */
  async patch(topic, patch, options) {
    /** @type {Record<string, any>} */
    const message = { type: "state_patch", topic, patch };
    if (options.ifVersion !== undefined) message.if_version = options.ifVersion;
    if (options.lamport !== undefined) message.lamport = options.lamport;
    const result = await this._link.request(message);
    return result.version;
  }

  // -- for the views ------------------------------------------------------------------------

  /**
   * Send `message` now if connected (else the next connection's `connected` does); its
   * answer goes to `answer`.
   *
   * @param {Record<string, any>} message
   * @param {Answer} answer
   */
  _send(message, answer) {
    if (!this._link.live()) return;
    this._answers.set(this._link.send(message), answer);
  }

  /**
   * A command nobody waits for but the view's closing: not sent again after a drop (the
   * next connection never had what it undoes); a refusal or a drop is no error then.
   *
   * @param {Record<string, any>} message
   */
  async _quietly(message) {
    if (!this._link.live()) return;
    try {
      await this._link.request(message, { replay: false });
    } catch (error) {
      if (!(error instanceof HybridbusError)) throw error;
    }
  }

  /** @param {Awareness} view */
  _watch(view) {
    this._send({ type: "awareness_watch", topic: view.topic }, (result, error) => view._watched(result, error));
  }

  /**
   * A watch answered after its view stopped watching: undo it, unless another view of the
   * topic watches now.
   *
   * @param {Awareness} view
   */
  _unwatched(view) {
    if (this._awareness.get(view.topic)?.watching) return;
    this._quietly({ type: "awareness_unwatch", topic: view.topic }).catch(() => {});
  }

  /** @param {StateTopic} doc */
  _subscribe(doc) {
    /** @type {Record<string, any>} */
    const message = { type: "state_subscribe", topic: doc.topic };
    if (doc.since !== null) message.since = doc.since;
    this._send(message, (result, error) => doc._subscribed(result, error));
  }

  /**
   * A subscribe answered after its document was closed: undo it, unless another document
   * of the topic was opened since.
   *
   * @param {StateTopic} doc
   */
  _unsubscribed(doc) {
    if (this._states.has(doc.topic)) return;
    this._quietly({ type: "state_unsubscribe", topic: doc.topic }).catch(() => {});
  }

  /** @param {Awareness | StateTopic} view */
  _forget(view) {
    if (view instanceof Awareness) {
      if (this._awareness.get(view.topic) === view) this._awareness.delete(view.topic);
    } else if (this._states.get(view.topic) === view) {
      this._states.delete(view.topic);
    }
  }

  /** @param {Error} error */
  _report(error) {
    this._link.report(error);
  }

  _failure() {
    return this._link.failure();
  }

  _self() {
    return this._link.self();
  }

  /**
   * @param {Record<string, any>} message
   * @param {RequestOptions} [options]
   */
  _request(message, options) {
    return this._link.request(message, options);
  }

  // -- fed by the client ----------------------------------------------------------------

  /** A new connection: own states set again, watches and state subscriptions sent again. */
  connected() {
    for (const view of this._awareness.values()) view._connected();
    for (const doc of this._states.values()) this._subscribe(doc);
  }

  /** The connection ended: what it answered no more; pushes wait for the next answers. */
  disconnected() {
    this._answers.clear();
    for (const view of this._awareness.values()) view._disconnected();
    for (const doc of this._states.values()) doc._disconnected();
  }

  /**
   * The answer to command `id`, if it was a view's: true then.
   *
   * @param {number} id
   * @param {any} result
   * @param {HybridbusError | null} error
   * @returns {boolean}
   */
  replied(id, result, error) {
    const answer = this._answers.get(id);
    if (!answer) return false;
    this._answers.delete(id);
    answer(result, error);
    return true;
  }

  /**
   * An `awareness` or `state` push: true if it was one.
   *
   * @param {any} m
   * @returns {boolean}
   */
  pushed(m) {
    if (m.type === "awareness") this._awareness.get(m.topic)?._pushed(m);
    else if (m.type === "state") this._states.get(m.topic)?._pushed(m);
    else return false;
    return true;
  }

  /**
   * The client ended: every view ends, with `error` (or quietly: the application closed it).
   *
   * @param {HybridbusError} error
   * @param {boolean} quietly
   */
  failAll(error, quietly) {
    this._answers.clear();
    for (const view of this._awareness.values()) view._end(error, quietly);
    this._awareness.clear();
    for (const doc of this._states.values()) {
      const opening = doc._opening;
      doc._opening = null;
      doc._end(quietly ? null : error);
      opening?.reject(error);
    }
    this._states.clear();
  }
}
