// The lobby: a tile for every live session, fed by ONE /ws/watch connection (the lobby feed
// "*" plus an overview subscription per session). On a lost connection the tiles say
// "reconnecting" and the page reconnects with backoff and a fresh token, then subscribes again.
import { STATUS_WORDS, duration, h, number, pageToken } from "./common.js";
import { sparkline } from "./lobby_tile.js";

const POINTS = 60; // values kept per metric for a sparkline
const GONE_AFTER_S = 60; // a mirror away this long is "gone" rather than "reconnecting"
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];

/** Words for where the mirror is, from the presence we last heard and since when. */
function mirrorWords(tile, hubLost, now) {
  if (hubLost) return "Hub connection lost, reconnecting";
  if (tile.mirror === "connected") return "Mirror connected";
  const away = (now - tile.since) / 1000;
  if (away < GONE_AFTER_S) return `Mirror reconnecting for ${duration(away)}`;
  return `Mirror gone for ${duration(away)}`;
}

export class Lobby {
  /** `grid` receives the tiles, `news` (a status region) their comings and goings;
   * `onChange()` hears of each session that comes or ends. */
  constructor(grid, news, catalogue, onChange) {
    this.grid = grid;
    this.news = news;
    this.catalogue = catalogue;
    this.onChange = onChange;
    this.tiles = new Map(); // session_id → tile state
    this.ws = null;
    this.connected = false;
    this.attempt = 0;
    this.subscribed = new Set(); // session ids subscribed on the current connection
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  async connect() {
    let token;
    try {
      ({ token } = await pageToken(this.attempt > 0));
    } catch {
      this.retry();
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/ws/watch`);
    this.ws = ws;
    this.subscribed.clear();
    for (const tile of this.tiles.values()) tile.counted = false;
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", token, protocol: 2, overview_hz: 4 }));
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.connected = false;
      this.ws = null;
      this.grid.dataset.connected = "false";
      this.render();
      this.retry();
    };
  }

  retry() {
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    // Jitter, so that many consoles do not all knock at once on a restarted hub.
    setTimeout(() => this.connect(), base / 2 + Math.random() * base);
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  subscribe(id) {
    if (this.subscribed.has(id)) return;
    this.subscribed.add(id);
    this.send({ type: "subscribe", session_id: id, mode: "overview" });
  }

  receive(m) {
    switch (m.type) {
      case "welcome":
        this.connected = true;
        this.attempt = 0;
        this.send({ type: "subscribe", session_id: "*", mode: "overview" });
        // Sessions shown before the connection was lost: their snapshot says where they are
        // now (their mirror may not be back yet, so the lobby feed would not name them).
        for (const id of this.tiles.keys()) this.subscribe(id);
        this.render();
        break;
      case "session_live":
        this.tile(m.session_id, m.session).presence(m.presence.mirror);
        this.subscribe(m.session_id);
        break;
      case "session_presence":
        this.tiles.get(m.session_id)?.presence(m.mirror, m.watchers);
        break;
      case "session_ended":
      case "ended":
        this.end(m.session_id);
        break;
      case "snapshot":
        this.snapshot(m);
        break;
      case "overview":
        this.overview(m);
        break;
      case "error":
        this.refused(m);
        break;
      case "subscribed":
        // The page's readiness, for people (and tests): the lobby feed is flowing.
        if (m.session_id === "*") this.grid.dataset.connected = "true";
        break;
      default:
        break; // unsubscribed: nothing to show
    }
  }

  tile(id, session) {
    let tile = this.tiles.get(id);
    if (!tile) {
      tile = new TileState(this, id, session);
      this.tiles.set(id, tile);
      this.grid.append(tile.el);
      this.grid.dataset.count = String(this.tiles.size);
      this.announce(`${tile.name}: session live`);
      this.onChange();
    } else if (session) {
      tile.session = session;
    }
    return tile;
  }

  snapshot(m) {
    if (m.ended) {
      this.end(m.session_id);
      return;
    }
    const tile = this.tile(m.session_id, m.session);
    tile.counted = true; // from here on the hub counts this lobby among the watchers
    const tasks = m.tasks || [];
    if (tasks.length) tile.task = tasks[tasks.length - 1];
    tile.merge(m.latest || {});
    tile.presence(m.presence?.mirror, m.presence?.watchers);
  }

  overview(m) {
    const tile = this.tiles.get(m.session_id);
    if (!tile) return;
    for (const event of m.events || []) {
      if (event.type === "presence") tile.presence(event.mirror, event.watchers);
    }
    if (m.task) tile.task = m.task;
    tile.merge(m.values || {});
  }

  refused(m) {
    if (!m.session_id || m.session_id === "*") return;
    this.subscribed.delete(m.session_id);
    const tile = this.tiles.get(m.session_id);
    if (tile) tile.counted = false;
    if (m.code === "resync" || m.code === "unavailable") {
      setTimeout(() => this.subscribe(m.session_id), 1000);
    } else if (m.code === "unknown") {
      this.drop(m.session_id);
    }
  }

  end(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    this.drop(id);
    this.announce(`${tile.name}: session ended`);
    this.onChange();
  }

  /** Arrivals and ends for screen readers (the tiles themselves tick every second, so they
   * are not a live region). */
  announce(text) {
    this.news.textContent = text;
  }

  drop(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    // No unsubscribe: an ended session's subscription is over on the hub already, and an
    // unknown one never started.
    this.tiles.delete(id);
    this.subscribed.delete(id);
    tile.el.remove();
    this.grid.dataset.count = String(this.tiles.size);
  }

  tick() { this.render(); }

  render() {
    const now = Date.now();
    for (const tile of this.tiles.values()) tile.render(!this.connected, now);
  }
}

class TileState {
  constructor(lobby, id, session) {
    this.lobby = lobby;
    this.id = id;
    this.session = session || { id };
    this.mirror = "connected";
    this.watchers = null;
    // Whether `watchers` counts this lobby's own overview subscription (it does once its
    // snapshot came): the tile shows the others, not the screen it is on.
    this.counted = false;
    this.since = Date.now();
    this.task = null;
    this.values = new Map(); // name → [latest, ...history]
    this.stateEl = h("p", { class: "state" });
    this.ageEl = h("p", { class: "age" });
    this.taskEl = h("p", { class: "task" });
    this.valuesEl = h("dl", { class: "values" });
    this.name = this.session.child_name || this.session.child_ref || id;
    const name = this.name;
    this.el = h("li", { class: "tile", "data-session": id },
      h("a", { href: `/console/live/${id}` }, h("h3", {}, name)),
      this.session.child_ref ? h("p", { class: "ref" }, this.session.child_ref) : null,
      this.stateEl, this.ageEl, this.taskEl, this.valuesEl);
  }

  presence(mirror, watchers) {
    if (mirror && mirror !== this.mirror) {
      this.mirror = mirror;
      this.since = Date.now();
    }
    if (watchers !== undefined && watchers !== null) this.watchers = watchers;
    this.render(!this.lobby.connected, Date.now());
  }

  merge(values) {
    for (const [name, value] of Object.entries(values)) {
      const history = this.values.get(name) || [];
      history.push(value);
      if (history.length > POINTS) history.shift();
      this.values.set(name, history);
    }
    this.renderValues();
    this.render(!this.lobby.connected, Date.now());
  }

  render(hubLost, now) {
    const state = hubLost || this.mirror !== "connected" ? "reconnecting" : "live";
    this.el.dataset.state = state;
    const others = Math.max(0, (this.watchers ?? 0) - (this.counted ? 1 : 0));
    const watchers = others ? ` · ${number(others)} ${others === 1 ? "other" : "others"} watching` : "";
    this.stateEl.textContent = `${mirrorWords(this, hubLost, now)}${watchers}`;
    const started = Date.parse(this.session.mirror_connected_at ?? "");
    this.ageEl.textContent = Number.isFinite(started)
      ? `Live for ${duration((now - started) / 1000)}`
      : "";
    const task = this.task;
    this.taskEl.textContent = task
      ? `${task.task_name}: ${STATUS_WORDS[task.status] ?? task.status}`
      : "No task yet";
  }

  renderValues() {
    const catalogue = this.lobby.catalogue;
    const names = [...this.values.keys()].sort();
    this.valuesEl.replaceChildren(...names.map((name) => {
      const history = this.values.get(name);
      const latest = history[history.length - 1];
      const verdict = catalogue.judge(name, latest);
      const words = { good: "in the good range", poor: "outside the good range" }[verdict];
      return h("div", { class: "metric" },
        h("dt", {}, catalogue.label(name)),
        h("dd", { class: verdict, "data-metric": name, title: words },
          h("span", { class: "value" }, catalogue.format(name, latest)),
          words ? h("span", { class: "sr" }, ` (${words})`) : null,
          sparkline(history, verdict)));
    }));
  }
}
