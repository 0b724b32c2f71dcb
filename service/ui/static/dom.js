// A small element builder. Values are always set as text or attributes, never parsed as
// HTML: an event message or a model's answer holding markup shows as that markup.

/** h("a", {href: "#/jobs", class: "x", onclick: f}, "text", child) -> HTMLAnchorElement */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element; props are attributes. */
export function s(tag, props = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A Unix time as local date and time; "" for none. */
export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

/** A number for a table cell: losses to 4 significant digits. */
export function num(v, digits = 4) {
  if (typeof v !== "number" || !Number.isFinite(v)) return v ?? "";
  return Number.isInteger(v) ? v.toLocaleString() : v.toPrecision(digits);
}
