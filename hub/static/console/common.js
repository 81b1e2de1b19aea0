// What every console page shares: the signed-in token, API calls, the metrics catalogue and
// number formats, the header with sign-out.
"use strict";

const CSRF = { "X-Mirror-Hub-Console": "1" };
let cached = null; // { token, until, subject, role }

export class SignedOut extends Error {}

/** POST to a console endpoint from this page (the header is the CSRF guard). */
export async function consolePost(path, body) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: body === undefined ? CSRF : { ...CSRF, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).message || message; } catch { /* not JSON */ }
    const error = response.status === 401 ? new SignedOut(message) : new Error(message);
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

export function toSignIn() {
  const next = encodeURIComponent(location.pathname + location.search);
  location.assign(`/console/login?next=${next}`);
}

/** The short-lived Bearer token of this console sign-in (renewed a minute before it ends). */
export async function pageToken(fresh = false) {
  if (!fresh && cached && cached.until - Date.now() > 60_000) return cached;
  try {
    const answer = await consolePost("/console/token");
    const life = (answer.expires_in ?? 86_400) * 1000;
    cached = { ...answer, until: Date.now() + life };
    return cached;
  } catch (error) {
    if (error instanceof SignedOut) toSignIn();
    throw error;
  }
}

/** GET an API path as the signed-in person; rejects with the hub's message. */
export async function api(path) {
  const { token } = await pageToken();
  const response = await fetch(path, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).message || message; } catch { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

/** An element with attributes and children (strings become text, never HTML). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const main = () => document.getElementById("main");

export function status(text) {
  const node = document.getElementById("status");
  if (node) node.textContent = text;
}

/** Numbers, dates and durations in the browser's language. */
const numberFormats = new Map();
export function number(value, decimals = 0) {
  if (!numberFormats.has(decimals)) {
    numberFormats.set(decimals, new Intl.NumberFormat(undefined, {
      minimumFractionDigits: decimals, maximumFractionDigits: decimals,
    }));
  }
  return numberFormats.get(decimals).format(value);
}

const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
export const dateTime = (iso) => (iso ? dateTimeFormat.format(new Date(iso)) : "—");
export const date = (iso) => (iso ? dateFormat.format(new Date(iso)) : "—");
export const clock = (ms) => timeFormat.format(new Date(ms));

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  const rest = s % 60;
  if (m === 0) return `${number(rest)} s`;
  return `${number(m)} min ${number(rest)} s`;
}

export const STATUS_WORDS = {
  pending: "not started", in_progress: "in progress", success: "done",
  failed: "not completed", skipped: "skipped",
};

/** The metrics catalogue: display names, units, decimals, good ranges. */
export class Catalogue {
  constructor(metrics) { this.metrics = metrics || {}; }

  static async load() { return new Catalogue((await api("/catalogue")).metrics); }

  info(name) { return this.metrics[name] || null; }

  label(name) {
    const info = this.info(name);
    return info ? info.display_name : name;
  }

  unit(name) { return this.info(name)?.unit ?? ""; }

  /** The stored value as shown (accuracy 0.87 → 87). */
  shown(name, stored) { return stored * (this.info(name)?.scale ?? 1); }

  decimals(name) { return this.info(name)?.decimals ?? 2; }

  /** "87 %" in the browser's locale. */
  format(name, stored) {
    if (stored === null || stored === undefined) return "—";
    const unit = this.unit(name);
    const text = number(this.shown(name, stored), this.decimals(name));
    return unit ? `${text} ${unit}` : text;
  }

  /** "good" inside the good range (or beyond it on the better side), "poor" otherwise, ""
   * when no range is known. */
  judge(name, stored) {
    const info = this.info(name);
    const range = info?.good_range;
    if (!range || stored === null || stored === undefined) return "";
    const value = this.shown(name, stored);
    if (value >= range[0] && value <= range[1]) return "good";
    if (info.better === "higher" && value > range[1]) return "good";
    if (info.better === "lower" && value < range[0]) return "good";
    return "poor";
  }

  rangeText(name) {
    const info = this.info(name);
    if (!info?.good_range) return "";
    const [low, high] = info.good_range;
    const d = info.decimals ?? 2;
    return `${number(low, d)}–${number(high, d)}${info.unit ? ` ${info.unit}` : ""}`;
  }
}

/** A value cell coloured against the good range, with the judgement in words too. */
export function valueCell(catalogue, name, stored) {
  const verdict = catalogue.judge(name, stored);
  const words = { good: "in the good range", poor: "outside the good range" }[verdict];
  return h("td", { class: `num ${verdict}`, title: words },
    catalogue.format(name, stored), words ? h("span", { class: "sr" }, ` (${words})`) : null);
}

/** The header: where you are, who is signed in, sign out. */
export async function header() {
  const who = await pageToken();
  const signOut = h("button", {
    type: "button",
    onclick: async () => {
      await consolePost("/console/logout");
      cached = null;
      location.assign("/console/login");
    },
  }, "Sign out");
  const top = document.getElementById("top");
  top.replaceChildren(h("nav", { "aria-label": "Console" },
    h("a", { href: "/console" }, "Console"), " ",
    h("a", { href: "/console/sessions" }, "Session history"), " ",
    h("span", { class: "who" }, `Signed in as ${who.subject}`), " ", signOut));
}

/** Run a page: header first, then its content; errors are shown in words. */
export async function run(render) {
  try {
    await header();
    await render();
  } catch (error) {
    if (error instanceof SignedOut) return;
    status(`Something went wrong: ${error.message}`);
    throw error;
  }
}
