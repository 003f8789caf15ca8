// Topics: every topic the token may see under a prefix, its latest offset and its rate.
//
// GET /v1/topics (a listing shows only the topics the caller may subscribe to or read). The
// rate is computed by polling: (offset now - offset at the previous poll) / seconds between.

import { h, fill, table, num, say } from "../dom.js";
import { PolledView } from "./polled.js";

const LIMIT = 1000;

export class TopicsView extends PolledView {
  constructor(ctx, root) {
    super(ctx, { every: 2000, list: "topics-list" });
    this.previous = new Map(); // topic -> [offset, time ms]
    this.rates = new Map();
    this.prefix = h("input", { id: "topics-prefix", placeholder: "prefix (e.g. docs/)", size: 30 });
    this.layout(root,
      ["Latest offset: the topic's newest event. Rate: events per second between the last two ",
        "polls (every 2 s)."],
      {
        above: h("div", { class: "toolbar" },
          h("label", {}, "Prefix ", this.prefix),
          h("button", { onclick: () => { this.previous.clear(); this.refresh(); } }, "Show")),
      });
  }

  async load() {
    const api = this.ctx.api;
    const body = await api.get("/v1/topics", {
      prefix: api.absolute(this.prefix.value.trim()),
      limit: LIMIT,
    });
    const now = Date.now();
    for (const info of body.topics) {
      const before = this.previous.get(info.topic);
      if (before) {
        const seconds = (now - before[1]) / 1000;
        this.rates.set(info.topic, seconds > 0 ? (info.offset - before[0]) / seconds : 0);
      }
      this.previous.set(info.topic, [info.offset, now]);
    }
    this.ctx.onTopics?.(body.topics, this.rates);
    say(this.status, body.more ? `the first ${LIMIT} topics` : `${body.topics.length} topics`);
    fill(this.list, table(
      [
        { label: "Topic", value: (t) => api.relative(t.topic), class: "topic" },
        { label: "Latest offset", value: (t) => num(t.offset), class: "num" },
        { label: "Rate (events/s)", value: (t) => this.rate(t.topic), class: "num" },
        {
          label: "",
          value: (t) => [
            h("button", { class: "small", onclick: () => this.ctx.show("stream", api.relative(t.topic)) }, "stream"),
            h("button", { class: "small", onclick: () => this.ctx.show("presence", api.relative(t.topic)) }, "presence"),
          ],
        },
      ],
      body.topics,
      "no topics you may see under this prefix",
    ));
  }

  rate(topic) {
    const rate = this.rates.get(topic);
    return rate === undefined ? "…" : num(rate, 1);
  }
}
