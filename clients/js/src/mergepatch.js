/**
 * JSON merge patch (RFC 7396): what a state topic's document is changed by.
 *
 * Owns: `mergePatch(target, patch)`, the RFC's MergePatch algorithm, the same
 * as the server's (src/hybridbus/core/merge_patch.py), and `jsonEqual`. Must
 * not mutate its arguments: the result shares the parts of `target` the patch leaves alone,
 * so each version of a document a `StateTopic` hands out stays as it was.
 *
 * @module
 */

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * `target` with `patch` merged in (RFC 7396 §2): an object patch merges member by member
 * (a `null` member removes it), anything else replaces `target` whole.
 *
 * @param {unknown} target
 * @param {unknown} patch
 * @returns {any}
 */
export function mergePatch(target, patch) {
  if (!isObject(patch)) return patch;
  /** @type {Record<string, unknown>} */
  const out = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else put(out, key, mergePatch(Object.hasOwn(out, key) ? out[key] : undefined, value));
  }
  return out;
}

/**
 * `object[key] = value` as a plain member, even for `"__proto__"` (a JSON key like any other).
 *
 * @param {Record<string, unknown>} object
 * @param {string} key
 * @param {unknown} value
 */
function put(object, key, value) {
  Object.defineProperty(object, key, { value, writable: true, enumerable: true, configurable: true });
}

/**
 * Whether two JSON values are equal (member order aside): how a view tells that a state it
 * got again after a reconnect is the one it had.
 *
 * @param {unknown} a
 * @param {unknown} b
 * @returns {boolean}
 */
export function jsonEqual(a, b) {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((item, i) => jsonEqual(item, b[i]));
  }
  const x = /** @type {Record<string, unknown>} */ (a);
  const y = /** @type {Record<string, unknown>} */ (b);
  const keys = Object.keys(x);
  return keys.length === Object.keys(y).length && keys.every((k) => Object.hasOwn(y, k) && jsonEqual(x[k], y[k]));
}
