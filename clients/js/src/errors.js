/**
 * Errors and codes of the hybridbus client protocol (docs/protocol.md §10 and §11).
 *
 * Owns: `HybridbusError` (every failure the client reports: `.code` is the
 * numeric error code of §10, `.reason` the server's or the client's words),
 * the names of the codes, and which WebSocket close codes mean "reconnect".
 * Must not do I/O.
 *
 * @module
 */

/** Error codes of docs/protocol.md §10 (the same numbers as Python's `hybridbus.errors.ErrorCode`). */
export const ErrorCode = Object.freeze({
  INVALID_INPUT: 1000,
  INVALID_EVENT: 1001,
  INVALID_TOPIC: 1002,
  INVALID_PATTERN: 1003,
  EVENT_TOO_LARGE: 1004,
  INVALID_POSITION: 1005,
  INVALID_SETTINGS: 1006,
  SCHEMA_VIOLATION: 1007,
  INVALID_SCHEMA: 1008,
  MALFORMED_MESSAGE: 1010,
  UNKNOWN_COMMAND: 1011,
  INVALID_COMMAND: 1012,
  ALREADY_SUBSCRIBED: 1013,
  NOT_SUBSCRIBED: 1014,
  TOO_MANY_SUBSCRIPTIONS: 1015,
  TOO_MANY_COMMANDS: 1016,
  UNAUTHORIZED: 1100,
  TOKEN_EXPIRED: 1101,
  TOKEN_INVALID: 1102,
  UNKNOWN_KEY: 1103,
  REVOKED: 1104,
  TOKEN_LIFETIME_EXCEEDED: 1105,
  FORBIDDEN: 1110,
  LIMIT_EXCEEDED: 1120,
  RATE_LIMITED: 1121,
  TOO_MANY_CONNECTIONS: 1122,
  TOO_MANY_REVOCATIONS: 1123,
  SIGNATURE_INVALID: 1130,
  TIMESTAMP_OUT_OF_WINDOW: 1131,
  UNKNOWN_ENDPOINT: 1132,
  SUBSCRIPTION_ENDED: 1200,
  SUBSCRIBER_TOO_SLOW: 1201,
  CONTINUITY_LOST: 1202,
  BUS_CLOSED: 1210,
  DISCONNECTED: 1220,
  ENGINE_ERROR: 1300,
  ENGINE_UNAVAILABLE: 1301,
  ENGINE_CORRUPT: 1302,
  ENGINE_LOCKED: 1303,
  ENGINE_READ_ONLY: 1304,
  REGISTRY_UNAVAILABLE: 1310,
  INTERNAL_ERROR: 1399,
  GROUP_ERROR: 1400,
  UNKNOWN_GROUP: 1401,
  GROUP_CONFLICT: 1402,
  DELIVERY_GONE: 1403,
  UNKNOWN_DEAD_LETTER: 1404,
  NOT_COORDINATOR: 1405,
  SCHEMA_ERROR: 1500,
  UNKNOWN_SCHEMA: 1501,
  SCHEMA_INCOMPATIBLE: 1502,
  YJS_MESSAGE_INVALID: 1600,
  YJS_UPDATE_INVALID: 1601,
  SESSION_REFUSED: 1620,
  INVALID_CURSOR: 1621,
  STATE_CONFLICT: 1640,
  PATCH_TOO_OLD: 1641,
  STATE_TOO_LARGE: 1642,
  AWARENESS_TOO_MANY_KEYS: 1643,
  AWARENESS_STATE_TOO_LARGE: 1644,
});

/** WebSocket close codes of docs/protocol.md §11. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  SHUTDOWN: 4000,
  SLOW_CONSUMER: 4001,
  NO_PING: 4002,
  SERVER_ERROR: 4003,
  TOKEN_EXPIRED: 4004,
  TOO_MANY_CONNECTIONS: 4005,
  BAD_PROTOCOL: 4500,
  UNAUTHORIZED: 4501,
  FORBIDDEN: 4502,
  MESSAGE_TOO_LARGE: 4503,
  UNSUPPORTED: 4504,
});

/** @type {Map<number, string>} */
const NAMES = new Map(Object.entries(ErrorCode).map(([name, code]) => [code, name]));

/** Error codes after which the same command may succeed later (Python's `RETRIABLE_ERRORS`). */
/** @type {Set<number>} */
const RETRIABLE = new Set([1016, 1121, 1122, 1201, 1301, 1303, 1304, 1310, 1405]);

/**
 * Whether a client reconnects after a connection closed with `code`: 4000–4499 and the
 * WebSocket codes 1001, 1006, 1011, 1012, 1013 (§11). 1000 from the server reconnects too
 * (the client decides on its own closes itself).
 *
 * @param {number | null | undefined} code
 * @returns {boolean}
 */
export function reconnectAllowed(code) {
  if (code === null || code === undefined || code === 1000) return true;
  return (code >= 4000 && code < 4500) || [1001, 1005, 1006, 1011, 1012, 1013].includes(code);
}

/**
 * Whether a command refused with error `code` may succeed when sent again later.
 *
 * @param {number} code
 * @returns {boolean}
 */
export function retriable(code) {
  return RETRIABLE.has(code);
}

/**
 * The name of an error code (`1110` → `"FORBIDDEN"`), or `"ERROR"` for one this client
 * does not know.
 *
 * @param {number} code
 * @returns {string}
 */
export function codeName(code) {
  return NAMES.get(code) ?? "ERROR";
}

/**
 * Every failure the client reports.
 *
 * `code` is the error code of docs/protocol.md §10: the server's (an `error` answer, an
 * `unsubscribed` or `group_left` push), or one of the client's own: 1220 `DISCONNECTED`
 * when the server closed the connection with a terminal close code (`closeCode`: 4501 for
 * a refused token…), when the client was closed, or when no answer came within the
 * request timeout; 1202 `CONTINUITY_LOST` at a gap in a subscription. `reason` is the
 * server's message (or the client's), `retriable` whether sending the same command later
 * may succeed. A 1405 `NOT_COORDINATOR` also carries `node` and `url`.
 */
export class HybridbusError extends Error {
  /**
   * @param {number} code
   * @param {string} reason
   * @param {{retriable?: boolean, closeCode?: number | null, node?: string, url?: string}} [more]
   */
  constructor(code, reason, more = {}) {
    super(`${code} ${codeName(code)}: ${reason}`);
    this.name = "HybridbusError";
    /** @type {number} */
    this.code = code;
    /** @type {string} */
    this.reason = reason;
    /** @type {boolean} */
    this.retriable = more.retriable ?? retriable(code);
    /** @type {number | null} */
    this.closeCode = more.closeCode ?? null;
    if (more.node !== undefined) this.node = more.node;
    if (more.url !== undefined) this.url = more.url;
  }
}

/**
 * The error a terminal close (or the client's own close) gives everything pending.
 *
 * @param {number | null} closeCode
 * @param {string} reason
 * @returns {HybridbusError}
 */
export function disconnected(closeCode, reason) {
  const text = closeCode === null ? reason : `closed with ${closeCode}: ${reason}`;
  return new HybridbusError(ErrorCode.DISCONNECTED, text, { closeCode, retriable: false });
}
