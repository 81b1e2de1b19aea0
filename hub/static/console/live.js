// A live session: a chart per metric (the last 60 s at full rate, exercise starts marked), the
// current exercise with a timer, the exercise list, the connection in words, and a banner when
// the stream resumed. Frames come through WatcherClient, which never leaves a hole: after a
// reconnect the hub replays what was missed, in order, before anything new.
import { WatcherClient } from "/client/mirror-hub.js";
import { metricChart } from "./charts.js";
import {
  api, Catalogue, duration, h, main, number, pageToken, run, status, STATUS_WORDS,
} from "./common.js";

const sessionId = decodeURIComponent(location.pathname.split("/").pop());
const WINDOW_S = 60;

const CONNECTION_WORDS = {
  idle: "Not connected yet",
  connecting: "Connecting…",
  open: "Live",
  backoff: "Connection lost, reconnecting…",
  offline: "This computer is offline, waiting for the network",
  ended: "The session has ended",
  closed: "Disconnected",
};

const charts = new Map(); // metric name → { chart, xs, ys, box }
const tasks = new Map(); // task id → task
const seqs = []; // every seq shown, for the details panel and the tests
let received = 0; // metric frames received
let lastTs = null; // device time of the newest frame
let clockOffset = 0; // local clock minus device clock, at the newest frame
let current = null; // { id, name, since (device s) }
let resume = null; // { fromTs, untilSeq } while a resumed stream catches up
let dirty = false;

let catalogue;
let client;
let grid;
const ui = {};

function chartFor(name) {
  let entry = charts.get(name);
  if (entry) return entry;
  const box = h("div", { class: "chart", "data-metric": name },
    h("h3", {}, `${catalogue.label(name)}${catalogue.unit(name) ? ` (${catalogue.unit(name)})` : ""}`),
    h("p", { class: "latest", "aria-live": "off" }));
  const sorted = [...charts.keys(), name].sort();
  const before = charts.get(sorted[sorted.indexOf(name) + 1]);
  grid.insertBefore(box, before ? before.box : null);
  const chart = metricChart(box, catalogue, name, { width: Math.max(280, box.clientWidth) });
  for (const task of tasks.values()) if (task.startedTs) chart.mark(task.startedTs, task.task_name);
  entry = { chart, xs: [], ys: [], box, latest: box.querySelector(".latest"), value: null };
  charts.set(name, entry);
  return entry;
}

function render() {
  dirty = false;
  for (const [name, entry] of charts) {
    if (!entry.changed) continue;
    entry.changed = false;
    entry.chart.setData(entry.xs, entry.ys);
    entry.box.dataset.points = String(entry.xs.length);
    entry.latest.textContent = `Now: ${catalogue.format(name, entry.value)}`;
    entry.latest.className = `latest ${catalogue.judge(name, entry.value)}`;
  }
  showDetails();
}

// Charts are redrawn at most this often: every frame is drawn, but 30 frames/s redraws of
// every chart would keep the main thread busy for little a person can see.
const REDRAW_MS = 100;
let lastRender = 0;

function schedule() {
  if (dirty) return;
  dirty = true;
  const wait = Math.max(0, lastRender + REDRAW_MS - performance.now());
  setTimeout(() => requestAnimationFrame((now) => { lastRender = now; render(); }), wait);
}

function onMetrics(frame) {
  received += 1;
  const ts = Number(frame.ts);
  for (const [name, value] of Object.entries(frame.values ?? {})) {
    const entry = chartFor(name);
    entry.xs.push(ts);
    entry.ys.push(catalogue.shown(name, value));
    entry.value = value;
    // Only the last minute is drawn (frames come in device-time order).
    let drop = 0;
    while (drop < entry.xs.length && entry.xs[drop] < ts - WINDOW_S) drop += 1;
    if (drop) { entry.xs.splice(0, drop); entry.ys.splice(0, drop); }
    entry.changed = true;
  }
}

function onTask(frame) {
  const task = { ...(tasks.get(frame.task_id) ?? { id: frame.task_id }), ...frame };
  if (frame.event === "started") {
    task.startedTs = Number(frame.ts);
    for (const { chart } of charts.values()) chart.mark(task.startedTs, task.task_name);
  }
  tasks.set(frame.task_id, task);
  if (task.status === "in_progress") current = { id: task.id, name: task.task_name, since: task.startedTs ?? null };
  else if (current && current.id === task.id) current = null;
  showTasks();
}

function onFrame(frame) {
  seqs.push(Number(frame.seq));
  lastTs = Number(frame.ts);
  clockOffset = Date.now() / 1000 - lastTs;
  if (frame.type === "metrics") onMetrics(frame);
  else if (frame.type === "task") onTask(frame);
  if (resume && Number(frame.seq) >= resume.untilSeq) {
    const seconds = resume.fromTs === null ? 0 : lastTs - resume.fromTs;
    ui.banner.hidden = false;
    ui.banner.textContent = `The connection dropped for a moment; caught up ${number(Math.max(0, seconds), 1)} s of data. Nothing is missing.`;
    resume = null;
  }
  schedule();
}

function showTasks() {
  ui.tasks.replaceChildren(...[...tasks.values()].map((t) => {
    const results = Object.entries(t.metrics ?? {}).map(([n, v]) => `${catalogue.label(n)} ${catalogue.format(n, v)}`);
    const time = t.duration_seconds === null || t.duration_seconds === undefined ? "" : ` · ${duration(t.duration_seconds)}`;
    return h("li", { "data-task": t.id }, h("strong", {}, t.task_name), `: ${STATUS_WORDS[t.status] ?? t.status}${time}`,
      results.length ? ` · ${results.join(", ")}` : "");
  }));
  tick();
}

function tick() {
  if (!current) {
    ui.current.textContent = tasks.size ? "No exercise in progress." : "No exercise yet.";
    return;
  }
  const now = Date.now() / 1000 - clockOffset;
  const elapsed = current.since === null ? null : now - current.since;
  ui.current.textContent = elapsed === null
    ? `Now: ${current.name}`
    : `Now: ${current.name}, for ${duration(elapsed)}`;
}

function showDetails() {
  ui.details.replaceChildren(
    h("dt", {}, "Last sequence number"), h("dd", {}, client?.lastSeq ?? "—"),
    h("dt", {}, "Reconnections"), h("dd", {}, String(client?.reconnects ?? 0)),
    h("dt", {}, "Gaps repaired by resuming"), h("dd", {}, String(client?.gaps ?? 0)),
    h("dt", {}, "Last close"), h("dd", {}, ui.lastClose ?? "—"));
}

function connect(token) {
  client = new WatcherClient({
    url: location.origin,
    sessionId,
    token,
    onTokenExpired: async () => (await pageToken(true)).token,
  });
  client.addEventListener("state", (e) => {
    ui.connection.textContent = CONNECTION_WORDS[e.detail.state] ?? e.detail.state;
    if (e.detail.state !== "open" && e.detail.state !== "ended" && !resume) resume = { fromTs: lastTs, untilSeq: Infinity };
  });
  client.addEventListener("welcome", (e) => {
    if (client.connections > 1 && resume) {
      const hubSeq = Number(e.detail.last_seq);
      if (client.lastSeq !== null && hubSeq > client.lastSeq) resume.untilSeq = hubSeq;
      else resume = null; // nothing was missed
    } else resume = null;
  });
  client.addEventListener("snapshot", (e) => {
    for (const t of e.detail.tasks ?? []) {
      tasks.set(String(t.id), { ...t, id: String(t.id) });
      if (t.status === "in_progress") {
        // Started before this page joined: the hub's record time, if the snapshot has it.
        const created = t.created_at ? Date.parse(t.created_at) / 1000 - clockOffset : NaN;
        current = { id: String(t.id), name: t.task_name, since: Number.isFinite(created) ? created : null };
      }
    }
    showTasks();
  });
  client.addEventListener("presence", (e) => {
    ui.mirror.textContent = e.detail.mirror === "connected"
      ? "The mirror is connected."
      : "The mirror is not connected; waiting for it to come back.";
    // The hub counts this page among the watchers.
    const others = Math.max(0, e.detail.watchers - 1);
    ui.watchers.textContent = others
      ? `You and ${number(others)} ${others === 1 ? "other" : "others"} are watching.`
      : "You are the only one watching.";
  });
  client.addEventListener("frame", (e) => onFrame(e.detail));
  client.addEventListener("close", (e) => {
    ui.lastClose = `${e.detail.code} ${e.detail.reason}`.trim();
    showDetails();
  });
  client.addEventListener("error", (e) => {
    if (e.detail.code !== null) status(`The hub refused this view: ${e.detail.reason || e.detail.message}`);
  });
  client.addEventListener("ended", () => {
    current = null;
    tick();
    ui.ended.hidden = false;
  });
  client.start();
}

run(async () => {
  catalogue = await Catalogue.load();
  const session = await api(`/sessions/${sessionId}`);
  status("");
  document.title = `Live: ${session.child_name} · Mirror Hub console`;
  main().querySelector("h1").textContent = `Live: ${session.child_name}`;
  ui.connection = h("strong", { id: "connection", role: "status" }, "Connecting…");
  ui.mirror = h("span", { id: "mirror" });
  ui.watchers = h("span", { id: "watchers" });
  ui.banner = h("p", { id: "resumed", class: "banner", role: "status", hidden: true });
  ui.current = h("p", { id: "current", class: "current", "aria-live": "polite" }, "No exercise yet.");
  ui.tasks = h("ol", { id: "tasks" });
  ui.details = h("dl", { class: "facts" });
  ui.ended = h("p", { id: "ended", class: "notice", hidden: true }, "The session has ended. ",
    h("a", { href: `/console/sessions/${sessionId}` }, "Open its report"), ".");
  grid = h("div", { class: "charts", id: "charts" });
  main().append(
    h("p", {}, ui.connection, " · ", ui.mirror, " ", ui.watchers), ui.banner, ui.ended, ui.current,
    h("h2", {}, "Last minute"), grid,
    h("h2", {}, "Exercises"), ui.tasks,
    h("details", {}, h("summary", {}, "Connection details"), ui.details));
  setInterval(tick, 1000);
  const { token } = await pageToken();
  connect(token);
  // For tests and the curious: what this page received and drew.
  window.consoleLive = {
    get client() { return client; },
    received: () => received,
    seqs: () => [...seqs],
    points: (name) => charts.get(name)?.xs.length ?? 0,
  };
});
