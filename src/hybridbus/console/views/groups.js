// Consumer groups: lag, pending and counters (GET /v1/groups), and one group's pending entries
// (GET /v1/groups/{group}?pending=N).

import { h, fill, table, num, when, say } from "../dom.js";
import { segment } from "../api.js";
import { PolledView } from "./polled.js";

export class GroupsView extends PolledView {
  constructor(ctx, root) {
    super(ctx, { every: 2000, list: "groups-list" });
    this.selected = null;
    this.detail = h("div", { id: "groups-detail" });
    this.layout(root,
      ["The groups you may consume from or manage, every 2 s. Lag: log positions behind the ",
        "head (an upper bound on events not taken yet); pending: taken, not settled."],
      { below: this.detail });
  }

  async load() {
    const api = this.ctx.api;
    const body = await api.get("/v1/groups");
    say(this.status, "");
    fill(this.list, table(
      [
        { label: "Group", value: (g) => g.name, class: "name" },
        { label: "Pattern", value: (g) => api.relative(g.pattern) },
        { label: "Members", value: (g) => num(g.members.length), class: "num" },
        { label: "Lag", value: (g) => num(g.lag), class: "num lag" },
        { label: "Pending", value: (g) => num(g.pending), class: "num pending" },
        { label: "Leased", value: (g) => num(g.leased), class: "num" },
        { label: "Dead letters", value: (g) => num(g.dead_letters), class: "num dead" },
        { label: "Acked", value: (g) => num(g.acked), class: "num" },
        {
          label: "",
          value: (g) => [
            h("button", { class: "small", onclick: () => { this.selected = g.name; this.refresh(); } }, "pending"),
            h("button", { class: "small", onclick: () => this.ctx.show("dead", g.name) }, "dead letters"),
          ],
        },
      ],
      body.groups,
      "no groups you may consume from or manage",
    ));
    if (this.selected) await this.pending(this.selected);
  }

  async pending(name) {
    const group = await this.ctx.api.get(`/v1/groups/${segment(name)}`, { pending: 50 });
    const api = this.ctx.api;
    fill(this.detail,
      h("h3", {}, `Pending in ${name} (oldest first, up to 50)`),
      table(
        [
          { label: "Topic", value: (e) => api.relative(e.topic) },
          { label: "Offset", value: (e) => num(e.offset), class: "num" },
          { label: "Member", value: (e) => e.member || "–" },
          { label: "Attempts", value: (e) => num(e.attempts), class: "num" },
          { label: "Idle", value: (e) => (e.idle === null ? "–" : `${e.idle.toFixed(1)} s`), class: "num" },
          { label: "Due", value: (e) => when(e.due) },
          { label: "Last error", value: (e) => e.error || "–" },
        ],
        group.entries,
        "nothing pending",
      ));
  }
}
