// Metrics as live charts. An admin's token reads the node's counters (GET /v1/stats, every 2 s):
// publish and delivery rates, publish-to-delivery latency percentiles (from the histogram's
// buckets between two polls), open connections, errors per second. Anyone else gets the rate
// of the topics they may see (from GET /v1/topics, as the topics view computes it).

import { h, fill, say, num, duration } from "../dom.js";
import { LineChart } from "../chart.js";
import { PolledView } from "./polled.js";

/** The `q` quantile (0..1) of the observations between two cumulative bucket lists. */
export function quantile(q, before, after) {
  const deltas = after.map(([le, n], i) => [le === "+Inf" ? Infinity : Number(le), n - (before?.[i]?.[1] ?? 0)]);
  const total = deltas.length ? deltas[deltas.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [bound, count] of deltas) {
    if (count >= rank) {
      if (bound === Infinity) return lower; // past the last bound: the last bound
      const inBucket = count - below;
      return inBucket > 0 ? lower + ((bound - lower) * (rank - below)) / inBucket : bound;
    }
    lower = bound;
    below = count;
  }
  return lower;
}

const rate = (value) => `${num(value, value < 10 ? 1 : 0)}/s`;

export class MetricsView extends PolledView {
  constructor(ctx, root) {
    super(ctx, { every: 2000, status: "metrics-status" });
    this.previous = null;
    this.canvases = {};
    const canvas = (name) => (this.canvases[name] = h("canvas", { class: "chart", id: `chart-${name}` }));
    this.charts = null;
    this.grid = h("div", { class: "charts" }, canvas("rate"), canvas("latency"), canvas("connections"), canvas("errors"));
    fill(root, this.status, this.grid);
  }

  start() {
    if (!this.charts) this.build();
    super.start();
  }

  build() {
    const c = this.canvases;
    if (this.ctx.api.admin) {
      this.charts = {
        rate: new LineChart(c.rate, { title: "Events", series: [{ label: "published" }, { label: "delivered" }], format: rate }),
        latency: new LineChart(c.latency, {
          title: "Publish → delivery",
          series: [{ label: "p50" }, { label: "p90" }, { label: "p99" }],
          format: duration,
        }),
        connections: new LineChart(c.connections, { title: "Connections", series: [{ label: "open" }, { label: "subscriptions" }], format: (v) => num(v, Number.isInteger(v) ? 0 : 1) }),
        errors: new LineChart(c.errors, { title: "Errors", series: [{ label: "errors" }], format: rate }),
      };
    } else {
      this.grid.replaceChildren(c.rate);
      this.charts = {
        rate: new LineChart(c.rate, { title: "Your topics", series: [{ label: "events" }], format: rate }),
      };
    }
  }

  async load() {
    if (this.ctx.api.admin) await this.pollStats();
    else await this.pollTopics();
  }

  async pollStats() {
    const stats = await this.ctx.api.get("/v1/stats");
    const before = this.previous;
    this.previous = stats;
    const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
    this.charts.connections.push([sum(stats.connections), sum(stats.subscriptions)]);
    if (!before) {
      say(this.status, "node counters (GET /v1/stats), every 2 s: rates appear after two polls");
      return;
    }
    const seconds = Math.max(0.001, stats.time - before.time);
    this.charts.rate.push([
      (stats.publishes - before.publishes) / seconds,
      (stats.deliveries - before.deliveries) / seconds,
    ]);
    const a = before.latency.buckets;
    const b = stats.latency.buckets;
    this.charts.latency.push([quantile(0.5, a, b), quantile(0.9, a, b), quantile(0.99, a, b)]);
    this.charts.errors.push([(stats.errors - before.errors) / seconds]);
    say(this.status,
      `node counters (GET /v1/stats), every 2 s · ${num(stats.publishes)} published, ` +
      `${num(stats.deliveries)} delivered, ${num(stats.errors)} errors since start`);
  }

  async pollTopics() {
    const api = this.ctx.api;
    const body = await api.get("/v1/topics", { prefix: api.prefix, limit: 1000 });
    const now = Date.now();
    const total = body.topics.reduce((n, t) => n + t.offset, 0);
    if (this.previous) {
      this.charts.rate.push([Math.max(0, (total - this.previous[0]) / ((now - this.previous[1]) / 1000))]);
    }
    this.previous = [total, now];
    say(this.status,
      "The node's metrics need an admin token; this chart is the event rate of the topics you may " +
      "see (GET /v1/topics, every 2 s).", "info");
  }
}
