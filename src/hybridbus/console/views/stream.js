// The live event stream: a subscription over the WebSocket protocol (the browser client), with
// the protocol's server-side filter (event types, a substring of the data), and pause/resume.
//
// While paused, events are kept in a bounded buffer (MAX_BUFFERED; past it the oldest go and are
// counted) and shown on resume; the page keeps the newest MAX_SHOWN rows.

import { h, fill, say, pretty } from "../dom.js";

export const MAX_BUFFERED = 1000;
export const MAX_SHOWN = 200;

export class StreamView {
  constructor(ctx, root) {
    this.ctx = ctx;
    this.sub = null;
    this.paused = false;
    this.buffer = [];
    this.dropped = 0;
    this.received = 0;
    this.pattern = h("input", { id: "stream-pattern", placeholder: "pattern (e.g. docs/#)", size: 28, value: "#" });
    this.types = h("input", { id: "stream-types", placeholder: "types, comma-separated", size: 24 });
    this.contains = h("input", { id: "stream-contains", placeholder: "data contains", size: 18 });
    this.go = h("button", { id: "stream-go", type: "submit" }, "Subscribe");
    this.pause = h("button", { id: "stream-pause", type: "button", disabled: true, onclick: () => this.toggle() }, "Pause");
    this.status = h("div", { class: "status", id: "stream-status" });
    this.rows = h("tbody", { id: "stream-rows" });
    this.detail = h("pre", { class: "detail", hidden: true });
    fill(root,
      h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); if (this.sub) this.unsubscribe(); else this.subscribe(); } },
        h("label", {}, "Pattern ", this.pattern),
        h("label", {}, "Types ", this.types),
        h("label", {}, "Contains ", this.contains),
        this.go,
        this.pause,
        h("button", { type: "button", onclick: () => { this.rows.replaceChildren(); this.detail.hidden = true; } }, "Clear")),
      h("p", { class: "hint" },
        "Filters run on the server (the protocol's subscribe filter): only matching events are ",
        `sent. Paused events wait in a buffer of ${MAX_BUFFERED}; the newest ${MAX_SHOWN} are shown.`),
      this.status,
      h("table", { class: "stream" },
        h("thead", {}, h("tr", {}, ["Received", "Topic", "Offset", "Type", "Id", "Data"].map((t) => h("th", {}, t)))),
        this.rows),
      this.detail);
  }

  async open(pattern) {
    if (this.sub) await this.unsubscribe();
    this.pattern.value = pattern;
    await this.subscribe();
  }

  start() {}

  stop() {} // the subscription goes on while other views are shown

  filter() {
    const filter = {};
    const types = this.types.value.split(",").map((t) => t.trim()).filter(Boolean);
    if (types.length) filter.types = types;
    if (this.contains.value) filter.contains = this.contains.value;
    return Object.keys(filter).length ? filter : undefined;
  }

  async subscribe() {
    const pattern = this.pattern.value.trim();
    if (!pattern) return;
    try {
      const client = await this.ctx.live();
      this.buffer = [];
      this.dropped = 0;
      this.received = 0;
      this.sub = client.subscribe(pattern, {
        filter: this.filter(),
        onEvent: (delivery) => this.arrived(delivery),
        onEnd: (error) => this.ended(error),
      });
      await this.sub.ready; // the subscribe reply, or the refusal
      if (!this.sub) return; // ended meanwhile
      this.go.textContent = "Unsubscribe";
      this.pause.disabled = false;
      this.update(`subscribed to ${pattern}`);
    } catch (error) {
      this.sub = null;
      say(this.status, `cannot subscribe: ${error.reason || error.message}`, "error");
    }
  }

  async unsubscribe() {
    const sub = this.sub;
    this.sub = null;
    this.go.textContent = "Subscribe";
    this.pause.disabled = true;
    this.paused = false;
    this.pause.textContent = "Pause";
    try {
      await sub.unsubscribe();
    } catch {
      // closed already
    }
    this.update("not subscribed");
  }

  ended(error) {
    if (!error || !this.sub) return;
    this.sub = null;
    this.go.textContent = "Subscribe";
    this.pause.disabled = true;
    say(this.status, `the subscription ended: ${error.reason || error.message}`, "error");
  }

  toggle() {
    this.paused = !this.paused;
    this.pause.textContent = this.paused ? "Resume" : "Pause";
    if (!this.paused) {
      for (const item of this.buffer) this.show(item);
      this.buffer = [];
      this.dropped = 0;
    }
    this.update();
  }

  arrived(delivery) {
    this.received += 1;
    const item = { at: new Date(), delivery };
    if (this.paused) {
      this.buffer.push(item);
      if (this.buffer.length > MAX_BUFFERED) {
        this.buffer.shift();
        this.dropped += 1;
      }
    } else {
      this.show(item);
    }
    this.update();
  }

  show({ at, delivery }) {
    const event = delivery.event ?? delivery;
    const data = event.data === undefined ? event.data_base64 ?? "" : JSON.stringify(event.data);
    const row = h("tr", { class: "event", onclick: () => { this.detail.hidden = false; this.detail.textContent = pretty(delivery); } },
      h("td", {}, at.toLocaleTimeString("sv-SE")),
      h("td", { class: "topic" }, delivery.topic ?? ""),
      h("td", { class: "num" }, delivery.offset ?? ""),
      h("td", { class: "type" }, event.type ?? ""),
      h("td", { class: "id" }, event.id ?? ""),
      h("td", { class: "data" }, data.length > 200 ? `${data.slice(0, 200)}…` : data));
    this.rows.prepend(row);
    while (this.rows.childElementCount > MAX_SHOWN) this.rows.lastElementChild.remove();
  }

  update(text) {
    if (text) this.base = text;
    const parts = [this.base || "not subscribed", `${this.received} received`];
    if (this.paused) parts.push(`paused: ${this.buffer.length} buffered`);
    if (this.dropped) parts.push(`${this.dropped} dropped from the buffer`);
    say(this.status, parts.join(" · "), this.paused ? "warn" : "info");
  }
}
