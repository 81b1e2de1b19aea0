// Minimal live watcher for one session: latest values, tasks, presence; resumes with `since`.
"use strict";

const params = new URLSearchParams(location.search);
const sessionId = params.get("session") || "";
// The credential comes in the URL *fragment* (#token=…), which browsers never send to a
// server, so it cannot end up in access logs; it travels to the hub inside `hello` only.
const token = new URLSearchParams(location.hash.slice(1)).get("token") || sessionStorage.getItem("hub-token");
if (token) sessionStorage.setItem("hub-token", token);
history.replaceState(null, "", location.pathname + location.search);
const el = (id) => document.getElementById(id);
const latest = new Map();
const tasks = new Map();
let lastSeq = null;
let backoff = 250;

function show(id, text) { el(id).textContent = text; }

function renderValues() {
  const rows = [...latest.entries()].sort(([a], [b]) => a.localeCompare(b));
  el("values").replaceChildren(...rows.map(([name, value]) => {
    const tr = document.createElement("tr");
    const k = document.createElement("td"); k.textContent = name;
    const v = document.createElement("td"); v.textContent = Number(value).toFixed(3);
    tr.append(k, v);
    return tr;
  }));
}

function renderTasks() {
  el("tasks").replaceChildren(...[...tasks.values()].map((t) => {
    const li = document.createElement("li");
    const duration = t.duration_seconds == null ? "" : ` · ${t.duration_seconds} s`;
    li.textContent = `${t.task_name}: ${t.status}${duration}`;
    return li;
  }));
}

function onMessage(msg) {
  switch (msg.type) {
    case "welcome":
      show("state", `connected · session seq ${msg.last_seq}`);
      break;
    case "snapshot":
      Object.entries(msg.latest).forEach(([k, v]) => latest.set(k, v));
      msg.tasks.forEach((t) => tasks.set(String(t.id), t));
      lastSeq = msg.last_seq;
      show("presence", `mirror ${msg.presence.mirror} · ${msg.presence.watchers} watching`);
      renderValues(); renderTasks();
      break;
    case "metrics":
      Object.entries(msg.values).forEach(([k, v]) => latest.set(k, v));
      lastSeq = msg.seq;
      renderValues();
      break;
    case "task":
      tasks.set(msg.task_id, { ...(tasks.get(msg.task_id) || {}), ...msg });
      lastSeq = msg.seq;
      renderTasks();
      break;
    case "presence":
      show("presence", `mirror ${msg.mirror} · ${msg.watchers} watching`);
      break;
    case "ended":
      show("state", `session ended at seq ${msg.last_seq}`);
      break;
    case "error":
      show("state", `error ${msg.code}: ${msg.message}`);
      break;
  }
  show("seq", lastSeq === null ? "" : `last seq ${lastSeq}`);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws/sessions/${sessionId}/watch`);
  ws.onopen = () => {
    backoff = 250;
    const hello = { type: "hello", token };
    if (lastSeq !== null) hello.since = lastSeq;  // resume: every frame after what we have
    ws.send(JSON.stringify(hello));
  };
  ws.onmessage = (event) => onMessage(JSON.parse(event.data));
  ws.onclose = (event) => {
    // 1000: session ended; 1002/1003/1008/4001/4004/4005: retrying would not help.
    if ([1000, 1002, 1003, 1008, 4004, 4005].includes(event.code)) {
      show("state", `closed (${event.code}) ${event.reason}`);
      return;
    }
    show("state", `reconnecting (${event.code})…`);
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
  };
}

if (sessionId) { show("session", sessionId); connect(); }
else { show("state", "open /watch?session=<session id>#token=<therapist token>"); }
