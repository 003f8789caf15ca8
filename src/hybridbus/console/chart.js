// A small live line chart on <canvas>: a few series over the last `points` samples.

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

export class LineChart {
  /**
   * `canvas`: the element; `series`: [{label}]; `format`: value -> text for the axis;
   * `points`: how many samples are kept (older ones scroll off).
   */
  constructor(canvas, { title, series, format = String, points = 90 }) {
    this.canvas = canvas;
    this.title = title;
    this.series = series.map((s, i) => ({ color: COLORS[i % COLORS.length], ...s }));
    this.format = format;
    this.points = points;
    this.samples = []; // [time ms, [values...]]
    this.draw();
  }

  /** Add one sample (a value per series; null: no value at this time). */
  push(values, time = Date.now()) {
    this.samples.push([time, values]);
    if (this.samples.length > this.points) this.samples.shift();
    this.draw();
  }

  /** The newest values, for tests and labels. */
  get last() {
    return this.samples.length ? this.samples[this.samples.length - 1][1] : null;
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 480;
    const height = canvas.clientHeight || 180;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = "12px system-ui, sans-serif";
    g.textBaseline = "middle";
    const left = 64;
    const right = 12;
    const top = 28;
    const bottom = 22;
    const plotW = width - left - right;
    const plotH = height - top - bottom;

    g.fillStyle = "#111827";
    g.textAlign = "left";
    g.fillText(this.title, 8, 12);
    let x = Math.max(120, g.measureText(this.title).width + 24);
    for (const s of this.series) {
      g.fillStyle = s.color;
      g.fillRect(x, 8, 10, 8);
      g.fillStyle = "#374151";
      const last = this.last?.[this.series.indexOf(s)];
      const text = `${s.label} ${last === null || last === undefined ? "–" : this.format(last)}`;
      g.fillText(text, x + 14, 12);
      x += g.measureText(text).width + 28;
    }

    const values = this.samples.flatMap(([, v]) => v).filter((v) => Number.isFinite(v));
    const max = niceMax(values.length ? Math.max(...values) : 0);
    g.strokeStyle = "#e5e7eb";
    g.fillStyle = "#6b7280";
    g.textAlign = "right";
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      g.beginPath();
      g.moveTo(left, y + 0.5);
      g.lineTo(left + plotW, y + 0.5);
      g.stroke();
      g.fillText(this.format((max * i) / 4), left - 6, y);
    }
    g.textAlign = "left";
    g.fillText(`last ${this.points} samples`, left, height - 8);
    if (this.samples.length < 2) return;

    const t0 = this.samples[0][0];
    const t1 = this.samples[this.samples.length - 1][0];
    const span = Math.max(1, t1 - t0);
    g.lineWidth = 2;
    this.series.forEach((s, index) => {
      g.strokeStyle = s.color;
      g.beginPath();
      let drawing = false;
      for (const [time, v] of this.samples) {
        const value = v[index];
        if (!Number.isFinite(value)) {
          drawing = false;
          continue;
        }
        const px = left + (plotW * (time - t0)) / span;
        const py = top + plotH - (plotH * value) / max;
        if (drawing) g.lineTo(px, py);
        else g.moveTo(px, py);
        drawing = true;
      }
      g.stroke();
    });
  }
}

/** A round axis maximum at or above `value` (1, 2, 5 × 10^n). */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}
