// Building the page: every string from the API goes in as a text node or a plain attribute value
// (never parsed as HTML), and SVG from the API is parsed as SVG and imported as nodes.

const SVG_NS = "http://www.w3.org/2000/svg";

// An element: attrs are set with setAttribute (no event handlers), children are nodes or text.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.toLowerCase().startsWith("on")) throw new Error(`no event handler attributes: ${name}`);
    el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// The <svg> of `text`, imported into this document; anything that could run is dropped first.
export function importSvg(text) {
  const doc = new DOMParser().parseFromString(text, "image/svg+xml");
  const root = doc.documentElement;
  if (doc.getElementsByTagName("parsererror").length || root.namespaceURI !== SVG_NS || root.localName !== "svg") {
    throw new Error("the server did not send an SVG");
  }
  for (const el of [...root.querySelectorAll("script, foreignObject, iframe, a")]) el.remove();
  for (const el of [root, ...root.querySelectorAll("*")]) {
    for (const attr of [...el.attributes]) {
      const value = attr.value.trim().toLowerCase();
      if (attr.name.toLowerCase().startsWith("on") || value.startsWith("javascript:")) el.removeAttribute(attr.name);
    }
  }
  return document.importNode(root, true);
}

// JSON for people, as text.
export const pretty = (value) => (value === undefined ? "" : JSON.stringify(value, null, 2));

const UNITS = [
  [86_400_000, "d"],
  [3_600_000, "h"],
  [60_000, "min"],
  [1000, "s"],
];

export function span(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  for (const [size, unit] of UNITS) {
    if (ms >= size) return `${(ms / size).toFixed(ms >= 10 * size ? 0 : 1)} ${unit}`;
  }
  return `${ms} ms`;
}

export const age = (iso, now = Date.now()) => `${span(now - Date.parse(iso))} ago`;

export const duration = (play, now = Date.now()) =>
  span((play.ended_at ? Date.parse(play.ended_at) : now) - Date.parse(play.started_at));

export function badge(status) {
  return h("span", { class: `status ${status}`, "data-status": status }, status);
}
