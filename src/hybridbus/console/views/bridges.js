// Bridges: the bridges the token may manage, their state, lag and counters (GET /v1/bridges).

import { h, fill, table, num, when, say } from "../dom.js";
import { PolledView } from "./polled.js";

export class BridgesView extends PolledView {
  constructor(ctx, root) {
    super(ctx, { every: 3000, list: "bridges-list" });
    this.layout(root, "Refreshed every 3 s. Lag: events the bridge has not carried yet.");
  }

  async load() {
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
  }
}
