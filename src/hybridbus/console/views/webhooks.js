// Outbound webhooks: the subscriptions the token may manage and their last attempts.
// GET /v1/webhooks/outbound, GET /v1/webhooks/outbound/{name}/attempts?limit=10.

import { h, fill, table, num, when, duration, say } from "../dom.js";
import { segment } from "../api.js";
import { PolledView } from "./polled.js";

export class WebhooksView extends PolledView {
  constructor(ctx, root) {
    super(ctx, { every: 3000, list: "webhooks-list" });
    this.layout(root, "Each subscription with its last 10 attempts, newest first (kept in memory by the node).");
  }

  async load() {
    const api = this.ctx.api;
    const body = await api.get("/v1/webhooks/outbound");
    const attempts = await Promise.all(body.webhooks.map((w) =>
      api.get(`/v1/webhooks/outbound/${segment(w.name)}/attempts`, { limit: 10 })
        .catch((error) => ({ attempts: [], error: error.message }))));
    say(this.status, "");
    if (!body.webhooks.length) {
      fill(this.list, h("p", { class: "empty" }, "no outbound webhooks you may manage"));
      return;
    }
    fill(this.list, body.webhooks.map((w, i) => h("section", { class: "card" },
      h("h3", {}, w.name, " ",
        h("span", { class: `state ${w.enabled === false ? "disabled" : "enabled"}` },
          w.enabled === false ? `disabled${w.disabled_reason ? `: ${w.disabled_reason}` : ""}` : "enabled")),
      h("p", { class: "meta" }, `${w.pattern} → ${w.url} · ${num(w.attempts)} attempts`),
      attempts[i].error ? h("p", { class: "msg error" }, attempts[i].error) : table(
        [
          { label: "Time", value: (a) => when(a.time) },
          { label: "Event", value: (a) => a.event_id },
          { label: "Topic", value: (a) => api.relative(a.topic) },
          { label: "Try", value: (a) => num(a.attempt), class: "num" },
          { label: "Outcome", value: (a) => h("span", { class: `state ${a.outcome}` }, a.outcome) },
          { label: "Status", value: (a) => (a.status ? a.status : "–"), class: "num" },
          { label: "Latency", value: (a) => duration(a.latency), class: "num" },
          { label: "Error", value: (a) => a.error || "–" },
        ],
        attempts[i].attempts,
        "no attempts yet",
      ))));
  }
}
