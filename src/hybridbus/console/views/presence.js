// Presence: who is subscribed to a topic now (GET /v1/topics/{topic}/presence), polled.

import { h, fill, table, say } from "../dom.js";
import { topicPath } from "../api.js";

const EVERY = 2000;

export class PresenceView {
  constructor(ctx, root) {
    this.ctx = ctx;
    this.timer = null;
    this.topic = h("input", { id: "presence-topic", placeholder: "topic (e.g. docs/42)", size: 30 });
    this.status = h("div", { class: "status" });
    this.list = h("div", { id: "presence-list" });
    fill(
      root,
      h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); this.refresh(); } },
        h("label", {}, "Topic ", this.topic),
        h("button", { type: "submit" }, "Show")),
      h("p", { class: "hint" }, "The clients subscribed to the topic on every node, every 2 s."),
      this.status,
      this.list,
    );
  }

  open(topic) {
    this.topic.value = topic;
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
    const topic = this.topic.value.trim();
    if (!topic) {
      say(this.status, "name a topic");
      fill(this.list);
      return;
    }
    const api = this.ctx.api;
    try {
      const body = await api.get(`/v1/topics/${topicPath(api.absolute(topic))}/presence`);
      say(this.status, `${body.clients.length} present on ${topic}`);
      fill(this.list, table(
        [
          { label: "Client", value: (c) => c.client },
          { label: "User", value: (c) => c.user ?? "–" },
          { label: "Device", value: (c) => c.device ?? "–" },
          { label: "Software", value: (c) => c.name ?? "–" },
          { label: "State", value: (c) => c.state ?? "active" },
        ],
        body.clients,
        "nobody is subscribed to this topic",
      ));
    } catch (error) {
      say(this.status, error.message, "error");
    }
  }
}
