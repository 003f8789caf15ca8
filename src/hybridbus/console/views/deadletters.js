// Dead letters of a group: list, inspect, replay (to the topic or into the group), purge.
//
// GET  /v1/groups/{group}/dead-letters            the list (needs manage)
// GET  /v1/groups/{group}/dead-letters/{id}       one, with its event
// POST /v1/groups/{group}/dead-letters/replay     {"ids": [...]} or {"all": true}, "to"
// POST /v1/groups/{group}/dead-letters/purge      {"ids": [...]} or {"all": true}

import { h, fill, table, num, when, say, pretty } from "../dom.js";
import { segment } from "../api.js";

export class DeadLettersView {
  constructor(ctx, root) {
    this.ctx = ctx;
    this.group = h("select", { id: "dead-group", onchange: () => this.refresh() });
    this.status = h("div", { class: "status", id: "dead-status" });
    this.list = h("div", { id: "dead-list" });
    this.detail = h("pre", { id: "dead-detail", class: "detail", hidden: true });
    fill(root,
      h("div", { class: "toolbar" },
        h("label", {}, "Group ", this.group),
        h("button", { onclick: () => this.refresh() }, "Refresh"),
        h("button", { id: "dead-replay-all", onclick: () => this.replay(null, "topic") }, "Replay all"),
        this.confirming("Purge all", () => this.purge(null), "danger")),
      h("p", { class: "hint" },
        "Replay publishes a copy of the event to its topic again (or, \"into group\", gives it to ",
        "this group only); purge removes the entry from the list. Both need manage on the group."),
      this.status, this.list, this.detail);
  }

  /** Open on the group `name` (from the groups view). */
  open(name) {
    this.wanted = name;
  }

  async start() {
    await this.groups();
    await this.refresh();
  }

  stop() {}

  async groups() {
    try {
      const body = await this.ctx.api.get("/v1/groups");
      const current = this.wanted || this.group.value;
      fill(this.group, body.groups.map((g) =>
        h("option", { value: g.name, selected: g.name === current }, `${g.name} (${g.dead_letters})`)));
      this.wanted = null;
    } catch (error) {
      say(this.status, error.message, "error");
    }
  }

  path(suffix = "") {
    return `/v1/groups/${segment(this.group.value)}/dead-letters${suffix}`;
  }

  async refresh() {
    if (!this.group.value) {
      say(this.status, "no groups you may manage");
      fill(this.list);
      return;
    }
    const api = this.ctx.api;
    try {
      const body = await api.get(this.path(), { limit: 200 });
      const n = body.dead_letters.length;
      say(this.status, `${n}${body.more ? "+" : ""} dead letter${n === 1 && !body.more ? "" : "s"} in ${this.group.value}`);
      fill(this.list, table(
        [
          { label: "Id", value: (d) => d.id, class: "id" },
          { label: "Topic", value: (d) => api.relative(d.topic) },
          { label: "Offset", value: (d) => num(d.offset), class: "num" },
          { label: "Reason", value: (d) => d.reason },
          { label: "Error", value: (d) => d.error || "–" },
          { label: "Attempts", value: (d) => num(d.attempts), class: "num" },
          { label: "Dead since", value: (d) => when(d.time) },
          {
            label: "",
            value: (d) => [
              h("button", { class: "small inspect", onclick: () => this.inspect(d.id) }, "inspect"),
              h("button", { class: "small replay", dataset: { id: d.id }, onclick: () => this.replay([d.id], "topic") }, "replay"),
              h("button", { class: "small", onclick: () => this.replay([d.id], "group") }, "into group"),
              this.confirming("purge", () => this.purge([d.id])),
            ],
          },
        ],
        body.dead_letters,
        "no dead letters",
      ));
    } catch (error) {
      say(this.status, error.message, "error");
    }
  }

  /** A button that asks once more before it acts (no blocking confirm() dialog). */
  confirming(label, act, kind = "small danger") {
    const button = h("button", { class: kind }, label);
    let armed = null;
    button.addEventListener("click", () => {
      if (armed) {
        clearTimeout(armed);
        armed = null;
        button.textContent = label;
        act();
        return;
      }
      button.textContent = `really ${label}?`;
      armed = setTimeout(() => { armed = null; button.textContent = label; }, 4000);
    });
    return button;
  }

  async inspect(id) {
    try {
      const body = await this.ctx.api.get(this.path(`/${segment(id)}`));
      this.detail.hidden = false;
      this.detail.textContent = pretty(body);
    } catch (error) {
      say(this.status, error.message, "error");
    }
  }

  async replay(ids, to) {
    const body = ids ? { ids, to } : { all: true, to };
    try {
      const answer = await this.ctx.api.post(this.path("/replay"), body);
      await this.refresh();
      say(this.status, `replayed ${answer.replayed} ${to === "group" ? "into the group" : "to their topics"}`, "ok");
    } catch (error) {
      say(this.status, error.message, "error");
    }
  }

  async purge(ids) {
    try {
      const answer = await this.ctx.api.post(this.path("/purge"), ids ? { ids } : { all: true });
      await this.refresh();
      say(this.status, `purged ${answer.purged}`, "ok");
    } catch (error) {
      say(this.status, error.message, "error");
    }
  }
}
