/**
 * Resume tokens (docs/protocol.md §7): `<epoch>-<p0>.<p1>…`, parsed and written back.
 *
 * Owns: the text form of a position and the exactly-once check of §7 (a push
 * at or before the subscription's position in its shard was seen already).
 * Must not do I/O.
 *
 * @module
 */

const TOKEN = /^([A-Za-z0-9_]{1,64})-(\d+(?:\.\d+)*)$/;

/**
 * @typedef {object} Position
 * @property {string} epoch the log's epoch (opaque)
 * @property {number[]} positions one per shard: everything up to it was seen
 */

/**
 * @param {string} token
 * @returns {Position | null} null if `token` is not a resume token
 */
export function parseToken(token) {
  const match = typeof token === "string" ? TOKEN.exec(token) : null;
  if (!match) return null;
  return { epoch: match[1], positions: match[2].split(".").map(Number) };
}

/**
 * @param {Position} position
 * @returns {string}
 */
export function formatToken(position) {
  return `${position.epoch}-${position.positions.join(".")}`;
}
