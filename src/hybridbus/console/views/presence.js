// Presence: who is subscribed to a topic now (GET /v1/topics/{topic}/presence), polled.

import { h, fill, table, say } from "../dom.js";
import { topicPath } from "../api.js";
import { PolledView } from "./polled.js";

export class PresenceView extends PolledView {
  constructor(ctx, root) {
    super(ctx, { every: 2000, list: "presence-list" });
    this.topic = h("input", { id: "presence-topic", placeholder: "topic (e.g. docs/42)", size: 30 });
    this.layout(root, "The clients subscribed to the topic on every node, every 2 s.", {
      above: h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); this.refresh(); } },
        h("label", {}, "Topic ", this.topic),
        h("button", { type: "submit" }, "Show")),
    });
  }

  open(topic) {
    this.topic.value = topic;
  }

  async load() {
    const topic = this.topic.value.trim();
    if (!topic) {
      say(this.status, "name a topic");
      fill(this.list);
      return;
    }
    const api = this.ctx.api;
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
  }
}
