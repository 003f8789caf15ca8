/**
 * The client's token: a fixed one or a provider, and refreshing it before it expires.
 *
 * Owns: which token a connect and `refresh()` send, asking the provider
 * (bounded by the request timeout, its answer checked), and the one refresh
 * timer of the current connection: at `expires - lead` (`refreshMargin`, at
 * most a quarter of the remaining lifetime) the client sends `refresh`; a
 * provider or a refresh that fails is retried with backoff until the token
 * lapses — then the server closes with 4004 and the reconnect asks the provider
 * again. A fixed token is never refreshed: 4004 then ends the client. The same
 * rules as the Python client's `client/tokens.py`. Must not touch the socket:
 * the client hands in the function that sends `refresh`.
 *
 * @module
 */

export class Tokens {
  /**
   * @param {string | null} token a fixed token
   * @param {(() => Promise<string> | string) | null} provider
   * @param {{timeout: number, margin: number, delay: (attempt: number) => number}} settings
   */
  constructor(token, provider, settings) {
    this._token = token;
    this._provider = provider;
    this._settings = settings;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._timer = undefined;
  }

  /** Whether a reconnect can bring a new token (only a provider gives one). */
  get renewable() {
    return this._provider !== null;
  }

  /** The token to connect with: a fresh one from the provider, else the fixed one (or none). */
  async forConnect() {
    return this._provider ? await this.fresh() : this._token;
  }

  /**
   * What `refresh(token)` sends: `token`, or a fresh one; without a provider `token` also
   * becomes the token reconnects use.
   *
   * @param {string | undefined} token
   * @returns {Promise<string | null>} null: the client has no token at all
   */
  async forRefresh(token) {
    if (token === undefined) return this._provider ? await this.fresh() : this._token;
    if (!this._provider) this._token = token;
    return token;
  }

  /** A token from the provider, bounded by the request timeout. */
  async fresh() {
    const provider = /** @type {() => Promise<string> | string} */ (this._provider);
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("the token provider did not answer in time")), this._settings.timeout);
    });
    try {
      const token = await Promise.race([provider(), late]);
      if (typeof token !== "string" || !token) throw new TypeError(`the token provider returned ${token}, not a token`);
      return token;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The current token expires at `expires` (Unix seconds; null: never): with a provider,
   * call `refresh` ahead of it, and again with backoff while it fails and the token lives.
   *
   * @param {number | null} expires
   * @param {() => Promise<unknown>} refresh sends `refresh`; resolves with the answer
   * @param {(error: Error) => boolean} failed told each failure; false: stop retrying
   */
  schedule(expires, refresh, failed) {
    this.stop();
    if (!this._provider || expires === null) return;
    const lifetime = expires * 1000 - Date.now();
    if (lifetime <= 0) return;
    const lead = Math.max(0, Math.min(this._settings.margin, lifetime / 4));
    const attempt = async (/** @type {number} */ n) => {
      try {
        await refresh(); // its reply schedules the next refresh
      } catch (error) {
        const left = expires * 1000 - Date.now();
        if (!failed(/** @type {Error} */ (error)) || left <= 0) return;
        this._timer = setTimeout(() => attempt(n + 1), Math.min(left, this._settings.delay(n)));
      }
    };
    this._timer = setTimeout(() => attempt(0), lifetime - lead);
  }

  /** The connection ended (or the client): no refresh is pending any more. */
  stop() {
    clearTimeout(this._timer);
    this._timer = undefined;
  }
}
