// Small DOM helpers for the console: no framework, no innerHTML of data (text nodes only).

/** An element: h("td", {class: "num"}, "42", child, ...). Attributes starting "on" are listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table: columns [{label, value: row => text|Node, class?}], rows, and an empty text. */
export function table(columns, rows, empty = "nothing to show") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.label)))),
    h(
      "tbody",
      {},
      rows.map((row) =>
        h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.value(row)))),
      ),
    ),
  );
}

/** A number for people: 1234567 -> "1,234,567"; a rate with one decimal. */
export function num(value, digits = 0) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** A Unix time (seconds) as local date and time; "–" for none. */
export function when(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toLocaleString("sv-SE");
}

/** Seconds as "850 µs", "12.3 ms", "1.20 s". */
export function duration(seconds) {
  if (seconds === undefined || seconds === null || Number.isNaN(seconds)) return "–";
  if (seconds < 0.001) return `${(seconds * 1e6).toFixed(0)} µs`;
  if (seconds < 1) return `${(seconds * 1e3).toFixed(1)} ms`;
  return `${seconds.toFixed(2)} s`;
}

/** A short message line in `el`: kind "error" | "ok" | "info". */
export function say(el, text, kind = "info") {
  fill(el, text ? h("span", { class: `msg ${kind}` }, text) : "");
}

/** JSON as indented text, for <pre>. */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}
