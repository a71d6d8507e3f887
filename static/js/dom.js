// Building the page from data: every piece of text from the API goes in as text (textContent or an
// attribute), never as HTML.

import { explain } from "./api.js";

/** An element: h("p", { class: "note", "data-testid": "x", onclick: fn }, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...flat(children));
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

/** An SVG element (the overview's charts). */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  el.append(...flat(children));
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value" && "value" in el && !(el instanceof SVGElement)) el.value = String(value);
    else if (name === "checked" || name === "disabled" || name === "hidden" || name === "selected") el[name] = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
}

function flat(children) {
  const out = [];
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    out.push(child instanceof Node ? child : String(child));
  }
  return out;
}

export const $ = (id) => document.getElementById(id);

/** A labelled field: the label wraps its control, and an error line the form fills per field. */
export function field(label, control, hint) {
  const id = control.id || "f-" + Math.random().toString(36).slice(2, 9);
  control.id = id;
  const error = h("span", { class: "field-error", id: id + "-error", "data-testid": "error-" + (control.name || id), hidden: true });
  control.setAttribute("aria-describedby", error.id);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("small", { class: "hint" }, hint) : null, error);
}

/** Show a problem document's per-field ``errors`` next to the form's fields; returns the first one. */
export function showFieldErrors(form, errors) {
  let first = null;
  for (const el of form.querySelectorAll(".field-error")) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
  for (const [name, messages] of Object.entries(errors || {})) {
    const control = form.elements.namedItem(name);
    if (!control || !control.id) continue;
    const el = document.getElementById(control.id + "-error");
    el.textContent = [].concat(messages).join(" ");
    el.hidden = false;
    control.setAttribute("aria-invalid", "true");
    first = first || control;
  }
  return first;
}

export function formatDate(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

export function formatYear(year) {
  if (year === null || year === undefined) return null;
  return year < 0 ? -year + " BC" : String(year);
}

export function money(amount) {
  return (Number(amount) || 0).toFixed(2);
}

/** Move focus to an element (a heading gets tabindex -1 to take it). */
export function focus(el) {
  if (!el) return;
  if (!el.matches("a, button, input, select, textarea, [tabindex]")) el.setAttribute("tabindex", "-1");
  el.focus();
}

/** Replace an element's children (nothing for null or undefined: the DOM would write "null").
 * What had the focus inside keeps it in the new children (a live refresh does not lose the place). */
export function put(el, ...children) {
  const restore = remember(el);
  el.replaceChildren(...flat(children));
  restore();
}

/** What has the focus inside ``el`` (by its data-testid or id); call the result to focus it again
 * after ``el`` was rebuilt. Call it before building new children that take nodes from the old. */
export function remember(el) {
  const active = document.activeElement;
  let key = null;
  if (active && active !== el && el.contains(active)) {
    if (active.dataset && active.dataset.testid) key = '[data-testid="' + CSS.escape(active.dataset.testid) + '"]';
    else if (active.id && !active.id.startsWith("f-")) key = "#" + CSS.escape(active.id);
  }
  return () => {
    if (!key || (document.activeElement && document.activeElement !== document.body && el.contains(document.activeElement))) return;
    const again = el.querySelector(key);
    if (!again) return;
    if (!again.matches("a, button, input, select, textarea, [tabindex]")) again.setAttribute("tabindex", "-1");
    again.focus({ preventScroll: true });
  };
}

/** A view's two lines of feedback: what an action did, and why it was refused (the server's
 * detail). act(what, fn, done) runs fn, says done(result), reloads the view and moves the focus
 * to what it says; a refusal is shown as "what: detail" instead, with the focus on it. */
export function feedback(reload) {
  const status = h("p", { class: "result", role: "status", "data-testid": "result" });
  const refusal = h("p", { class: "error", role: "alert", "data-testid": "refusal" });
  function say(text) {
    refusal.textContent = "";
    status.textContent = text;
  }
  function refuse(what, err) {
    status.textContent = "";
    refusal.textContent = what + ": " + explain(err);
  }
  async function act(what, fn, done) {
    try {
      const result = await fn();
      say(done(result));
      await reload();
      focus(status);
    } catch (err) {
      refuse(what, err);
      focus(refusal);
    }
  }
  return { status, refusal, say, refuse, act };
}
