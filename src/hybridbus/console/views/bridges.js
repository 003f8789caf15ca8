// Bridges: the bridges the token may manage, their state, lag and counters (GET /v1/bridges).

import { h, fill, table, num, when, say } from "../dom.js";

const EVERY = 3000;

export class BridgesView {
  constructor(ctx, root) {
    this.ctx = ctx;
    this.timer = null;
    this.status = h("div", { class: "status" });
    this.list = h("div", { id: "bridges-list" });
    fill(root, h("p", { class: "hint" }, "Refreshed every 3 s. Lag: events the bridge has not carried yet."),
      this.status, this.list);
  }

  start() {
    this.refresh();
    this.timer = setInterval(() => this.refresh(), EVERY);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    try {
      const body = await this.ctx.api.get("/v1/bridges");
      say(this.status, "");
      fill(this.list, table(
        [
          { label: "Name", value: (b) => b.name },
          { label: "Kind", value: (b) => `${b.kind} (${b.direction})` },
          { label: "State", value: (b) => h("span", { class: `state ${b.state}` }, b.state) },
          { label: "Lag", value: (b) => num(b.lag), class: "num" },
          { label: "Received", value: (b) => num(b.received), class: "num" },
          { label: "Delivered", value: (b) => num(b.delivered), class: "num" },
          { label: "Errors", value: (b) => num(b.errors), class: "num" },
          { label: "Last error", value: (b) => (b.last_error ? `${b.last_error} (${when(b.last_error_time)})` : "–") },
        ],
        body.bridges,
        "no bridges you may manage",
      ));
    } catch (error) {
      say(this.status, error.message, "error");
    }
  }
}
