// The publish form: one CloudEvent to a topic, over the browser client's WebSocket (an API key,
// which the WebSocket does not take, publishes over HTTP: POST /v1/topics/{topic}/events).

import { h, fill, say, pretty } from "../dom.js";
import { topicPath } from "../api.js";

export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12)); // randomUUID needs a secure context
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class PublishView {
  constructor(ctx, root) {
    this.ctx = ctx;
    this.topic = h("input", { id: "publish-topic", placeholder: "topic (e.g. docs/42)", size: 30, required: true });
    this.type = h("input", { id: "publish-type", value: "com.example.console", size: 30, required: true });
    this.source = h("input", { id: "publish-source", value: "/console", size: 20 });
    this.data = h("textarea", { id: "publish-data", rows: 6, cols: 60 }, '{"hello": "world"}');
    this.status = h("div", { class: "status", id: "publish-status" });
    this.ack = h("pre", { class: "detail", id: "publish-ack", hidden: true });
    fill(root,
      h("form", { class: "stacked", onsubmit: (e) => { e.preventDefault(); this.publish(); } },
        h("label", {}, "Topic", this.topic),
        h("label", {}, "Type", this.type),
        h("label", {}, "Source", this.source),
        h("label", {}, "Data (JSON)", this.data),
        h("div", {}, h("button", { type: "submit", id: "publish-go" }, "Publish"))),
      this.status, this.ack);
  }

  start() {}

  stop() {}

  async publish() {
    let data;
    try {
      data = this.data.value.trim() ? JSON.parse(this.data.value) : undefined;
    } catch (error) {
      say(this.status, `data is not JSON: ${error.message}`, "error");
      return;
    }
    const topic = this.topic.value.trim();
    const event = { id: newId(), source: this.source.value || "/console", type: this.type.value, data };
    try {
      let ack;
      if (this.ctx.api.token.startsWith("hb_")) {
        const api = this.ctx.api;
        const body = await api.post(`/v1/topics/${topicPath(api.absolute(topic))}/events`,
          { specversion: "1.0", ...event }, "application/cloudevents+json");
        ack = body.acks[0];
      } else {
        ack = await (await this.ctx.live()).publish(topic, event);
      }
      say(this.status, `published ${event.id} to ${topic} at offset ${ack.offset}`, "ok");
      this.ack.hidden = false;
      this.ack.textContent = pretty(ack);
    } catch (error) {
      say(this.status, `not published: ${error.reason || error.message}`, "error");
    }
  }
}
