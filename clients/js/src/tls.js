/**
 * TLS options for Node's `ws` package: the CAs to trust, the client certificate to present.
 *
 * Owns: checking `options.tls` (`{ ca, cert, key }`, PEM text or bytes) and what the
 * client passes, with it, as the third argument of the `ws` package's WebSocket
 * constructor (Node's `tls.connect` options). The server's certificate is always
 * verified: no other option is taken (`rejectUnauthorized` among them), and
 * `rejectUnauthorized: true` is passed, so not even NODE_TLS_REJECT_UNAUTHORIZED=0
 * turns the check off. A browser's WebSocket, and Node's built-in one, take no TLS
 * options: `tls` with one of them is refused (they trust what the browser or the
 * system trusts; in Node, `NODE_EXTRA_CA_CERTS`). Must not use Node APIs: src/ loads
 * in browsers (reading the PEM files is the application's).
 *
 * @module
 */

const NAMES = ["ca", "cert", "key"];

/**
 * The options for `new WebSocket(url, protocols, options)` of the `ws` package, or null
 * without `tls`. Throws a TypeError for what cannot be honoured.
 *
 * @param {any} tls `options.tls`
 * @param {any} WebSocket the constructor the client uses
 * @returns {Record<string, unknown> | null}
 */
export function tlsOptions(tls, WebSocket) {
  if (tls === undefined || tls === null) return null;
  if (typeof tls !== "object" || Array.isArray(tls)) {
    throw new TypeError("options.tls: an object { ca, cert, key } of PEM text or bytes");
  }
  for (const name of Object.keys(tls)) {
    if (!NAMES.includes(name)) {
      throw new TypeError(
        `options.tls.${name}: not an option (only ca, cert and key: the server's certificate is always verified)`,
      );
    }
  }
  // `ws`'s WebSocket (and its subclasses) has terminate(); the WHATWG WebSocket has not.
  if (typeof WebSocket?.prototype?.terminate !== "function") {
    throw new TypeError(
      "options.tls needs the ws package's WebSocket as options.WebSocket: a browser's or Node's built-in " +
        "WebSocket takes no TLS options (in Node, trust a CA with NODE_EXTRA_CA_CERTS)",
    );
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("options.tls: cert and key go together (the client certificate and its private key)");
  }
  /** @type {Record<string, unknown>} */
  const options = { rejectUnauthorized: true };
  for (const name of NAMES) if (tls[name] !== undefined) options[name] = tls[name];
  return options;
}
