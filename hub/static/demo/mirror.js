// Demo mirror: a synthetic child doing raise_hand → squat → balance at 30 frames/s, streamed
// with the hub's own client module. /demo/mirror?session=ID#token=MIRROR_TOKEN streams to that
// session; /demo/mirror#token=STAFF_TOKEN first creates a session. `frames=N` ends the session
// after N frames; `store=memory` keeps the outbox in memory instead of IndexedDB.
import { MirrorClient } from "/client/mirror-hub.js";

const RATE = 30; // frames per second
const TASK_FRAMES = 300; // 10 s per task
const TASKS = ["raise_hand", "squat", "balance"];

const el = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const log = [];
window.mirrorDemo = { log, client: null }; // for people poking at it, and for the tests

function note(text) {
  log.push({ t: Date.now(), text });
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  el("log").prepend(li);
  while (el("log").children.length > 12) el("log").lastChild.remove();
}

function fail(text) {
  el("notice").textContent = text;
  el("notice").hidden = false;
}

function tokenRole(token) {
  try {
    return JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).role ?? null;
  } catch {
    return null;
  }
}

// The credential comes in the URL fragment, which browsers never send to a server; it is kept
// in this tab's sessionStorage so that a reload resumes, and travels to the hub in `hello` only.
async function credentials() {
  let sessionId = params.get("session");
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  history.replaceState(null, "", location.pathname + location.search);
  if (!sessionId && given) {
    if (tokenRole(given) === "mirror") throw new Error("a mirror token needs its ?session=ID");
    const response = await fetch("/sessions", {
      method: "POST",
      headers: { Authorization: `Bearer ${given}`, "Content-Type": "application/json" },
      body: JSON.stringify({ child_name: "Demo child", child_age: 7 }),
    });
    if (!response.ok) throw new Error(`creating a session failed: HTTP ${response.status} (a therapist or admin token is needed)`);
    const created = await response.json();
    sessionId = created.id;
    sessionStorage.setItem(`demo-mirror:${sessionId}`, created.mirror_token);
    params.set("session", sessionId);
    history.replaceState(null, "", `${location.pathname}?${params}`);
    return { sessionId, token: created.mirror_token };
  }
  if (!sessionId) throw new Error("open /demo/mirror#token=STAFF_TOKEN (creates a session) or /demo/mirror?session=ID#token=MIRROR_TOKEN");
  if (given) {
    if (tokenRole(given) !== "mirror") {
      throw new Error("only the session's mirror_token (from POST /sessions) may write it; a staff token may create a new session: /demo/mirror#token=STAFF_TOKEN");
    }
    sessionStorage.setItem(`demo-mirror:${sessionId}`, given);
  }
  const token = sessionStorage.getItem(`demo-mirror:${sessionId}`);
  if (!token) throw new Error("no token for this session: add #token=MIRROR_TOKEN to the URL");
  return { sessionId, token };
}

// Deterministic in seq, so a reloaded page goes on with the same child where it stopped.
const noise = (k) => { const x = Math.sin(k * 12.9898) * 43758.5453; return x - Math.floor(x) - 0.5; };
const wave = (t, period) => 0.5 - 0.5 * Math.cos((2 * Math.PI * t) / period);
const round = (v, d = 3) => Math.round(v * 10 ** d) / 10 ** d;

function taskId(sessionId, index) {
  return sessionId.slice(0, 24) + index.toString(16).padStart(12, "0");
}

function metricsAt(name, t, k) {
  const jitter = noise(k) * 0.02;
  if (name === "raise_hand") {
    return { max_angle: round(25 + 145 * wave(t, 3) + noise(k) * 3, 1), accuracy: round(0.84 + 0.08 * Math.sin(t * 0.7) + jitter), stability: round(0.9 - 0.06 * Math.abs(Math.sin(t)) + jitter) };
  }
  if (name === "squat") {
    const knee = 170 - 85 * wave(t, 2.5) + noise(k) * 2;
    return { knee_angle: round(knee, 1), depth: round((170 - knee) / 85), accuracy: round(0.78 + 0.1 * Math.sin(t * 0.5) + jitter) };
  }
  const sway = 1.5 + 0.8 * Math.sin(1.3 * t) + 0.3 * Math.sin(3.7 * t) + noise(k) * 0.2;
  return { sway_cm: round(sway, 2), stability: round(Math.max(0, 1 - sway / 6)), accuracy: round(0.88 + 0.05 * Math.sin(t * 0.3) + jitter) };
}

/** Frame number k (1-based) of the synthetic session. */
function frameAt(sessionId, k) {
  const index = Math.floor((k - 1) / TASK_FRAMES);
  const offset = (k - 1) % TASK_FRAMES;
  const name = TASKS[index % TASKS.length];
  const task = { task_id: taskId(sessionId, index), task_name: name };
  const t = offset / RATE;
  if (offset === 0) return { type: "task", ...task, event: "started", status: "in_progress" };
  if (offset === TASK_FRAMES - 1) {
    return { type: "task", ...task, event: "finished", status: "success", duration_seconds: round(t, 2), metrics: metricsAt(name, t, k) };
  }
  return { type: "metrics", task_id: task.task_id, values: metricsAt(name, t, k) };
}

const history30 = []; // the latest accuracy values, for the chart

function show(client, frame, k) {
  el("seq").textContent = client.lastSeq;
  el("acked").textContent = client.ackedSeq;
  el("unacked").textContent = client.unacked;
  el("reconnects").textContent = client.reconnects;
  if (!frame) return;
  el("task").textContent = frame.task_name ?? TASKS[Math.floor((k - 1) / TASK_FRAMES) % TASKS.length];
  el("progress").style.width = `${(((k - 1) % TASK_FRAMES) / (TASK_FRAMES - 1)) * 100}%`;
  const values = frame.values ?? frame.metrics ?? {};
  const rows = Object.entries(values).map(([name, value]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"); a.textContent = name;
    const b = document.createElement("td"); b.textContent = value.toFixed(name.endsWith("angle") ? 1 : 3);
    tr.append(a, b);
    return tr;
  });
  if (rows.length) el("values").replaceChildren(...rows);
  const main = values.accuracy;
  if (main !== undefined) {
    history30.push(main);
    if (history30.length > 150) history30.shift();
    // Scaled to what is shown, so that small changes of a score stay visible.
    const low = Math.min(...history30) - 0.01;
    const high = Math.max(...history30) + 0.01;
    const y = (v) => 57 - ((v - low) / (high - low)) * 54;
    el("line").setAttribute("points", history30.map((v, i) => `${i * 2},${y(v).toFixed(1)}`).join(" "));
  }
}

async function main() {
  const { sessionId, token } = await credentials();
  el("session").textContent = sessionId;
  const total = Number(params.get("frames") || Infinity);
  const client = new MirrorClient({
    url: location.origin,
    sessionId,
    token,
    store: params.get("store") === "memory" ? "memory" : "indexeddb",
    onTokenExpired: ({ reason }) => {
      fail(`${reason}: open this page again with a new #token=`);
      return null;
    },
  });
  window.mirrorDemo.client = client;
  client.addEventListener("state", ({ detail }) => {
    el("state").textContent = detail.state;
    el("state").dataset.state = detail.state;
    note(`state ${detail.state}`);
  });
  client.addEventListener("welcome", ({ detail }) => note(`welcome: hub has seq ${detail.last_seq}, acked ${detail.acked_seq}`));
  client.addEventListener("close", ({ detail }) => note(`closed ${detail.code} ${detail.reason}${detail.reconnect ? ", reconnecting" : ""}`));
  client.addEventListener("error", ({ detail }) => { note(`error: ${detail.message}`); if (detail.code) fail(detail.message); });
  client.addEventListener("ack", () => show(client));
  client.addEventListener("ended", ({ detail }) => note(`session ended at seq ${detail.lastSeq}`));
  await client.start();
  if (client.lastSeq) note(`resumed from the store at seq ${client.lastSeq}, ${client.unacked} unacked`);
  show(client);

  let ending = false;
  const timer = setInterval(() => {
    if (client.stopped) return clearInterval(timer);
    if (client.lastSeq >= total) {
      clearInterval(timer);
      if (!ending) {
        ending = true;
        client.end().then(() => show(client), (error) => fail(error.message));
      }
      return;
    }
    if (!client.writable) return; // backpressure: the same frame is tried on the next tick
    const k = client.lastSeq + 1;
    const frame = frameAt(sessionId, k);
    client.send(frame);
    show(client, frame, k);
  }, 1000 / RATE);
}

main().catch((error) => fail(error.message));
