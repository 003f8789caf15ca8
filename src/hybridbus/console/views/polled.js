// The base of the views that poll the API while they are shown (topics, presence, groups,
// webhooks, bridges, metrics): a status line, a list, and a timer.
//
// A subclass writes `load()` (one poll; it may throw) and lays its root out with `layout()`.
// `start()` loads now and every `every` ms until `stop()`; a failed load is shown in the status
// line, and the next poll tries again.

import { h, fill, say } from "../dom.js";

export class PolledView {
  /** `every`: ms between two polls; `list`, `status`: the ids of the list and status elements. */
  constructor(ctx, { every, list, status }) {
    this.ctx = ctx;
    this.every = every;
    this.timer = null;
    this.status = h("div", { class: "status", id: status });
    this.list = list ? h("div", { id: list }) : null;
  }

  /** Fill `root`: `above` (a toolbar), the hint, the status line, the list, then `below`. */
  layout(root, hint, { above = [], below = [] } = {}) {
    fill(root, above, h("p", { class: "hint" }, hint), this.status, this.list, below);
  }

  start() {
    this.refresh();
    this.timer = setInterval(() => this.refresh(), this.every);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    try {
      await this.load();
    } catch (error) {
      say(this.status, error.message, "error");
    }
  }
}
