// The HTTP API as the console calls it: every request carries the user's own token.
//
// Topics in the HTTP API are absolute (`acme/docs/42`); the console lets a tenant's user write
// them relative to the tenant, as the WebSocket protocol does, and adds the prefix here.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem?.code;
    this.problem = problem;
  }
}

export class Api {
  /** `token`: a JWT or an API key (`hb_...`), sent as `Authorization: Bearer`. */
  constructor(token, base = "") {
    this.token = token;
    this.base = base;
    this.who = null; // GET /v1/whoami, after `identify`
  }

  /** Who the token is; throws ApiError (401) when the server does not take it. */
  async identify() {
    this.who = await this.get("/v1/whoami");
    return this.who;
  }

  get admin() {
    return Boolean(this.who?.admin);
  }

  /** What goes in front of a relative topic for the HTTP API ("" for an admin). */
  get prefix() {
    return this.admin ? "" : `${this.who.tenant}/`;
  }

  absolute(topic) {
    return this.prefix + topic.replace(/^\/+/, "");
  }

  relative(topic) {
    const prefix = this.prefix;
    return prefix && topic.startsWith(prefix) ? topic.slice(prefix.length) : topic;
  }

  async request(method, path, { query, body, type } = {}) {
    let url = this.base + path;
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) {
        if (value !== undefined && value !== null && value !== "") params.set(key, value);
      }
      const text = params.toString();
      if (text) url += `?${text}`;
    }
    const headers = { Authorization: `Bearer ${this.token}` };
    let payload;
    if (body !== undefined) {
      headers["Content-Type"] = type || "application/json";
      payload = typeof body === "string" ? body : JSON.stringify(body);
    }
    const response = await fetch(url, { method, headers, body: payload, cache: "no-store" });
    if (response.status === 204) return null;
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = { detail: text };
    }
    if (!response.ok) throw new ApiError(response.status, parsed);
    return parsed;
  }

  get(path, query) {
    return this.request("GET", path, { query });
  }

  post(path, body, type) {
    return this.request("POST", path, { body: body ?? {}, type });
  }
}

/** A path segment: a topic keeps its slashes, a name (`acme/billing`) is one segment. */
export function segment(name) {
  return encodeURIComponent(name);
}

export function topicPath(topic) {
  return topic.split("/").map(encodeURIComponent).join("/");
}
