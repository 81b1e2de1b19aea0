// Mirror Hub client for browsers and Node >= 20: the wire protocol (docs/protocol.md), version 1
// for mirrors, 2 (frames in batches) for watchers unless they ask for 1.
//
// MirrorClient keeps every frame until the hub acks it as committed, reconnects with
// exponential backoff and full jitter (at once when the browser comes back online or a
// background tab becomes visible), resends after `welcome.last_seq`, and ends only when
// everything is acked. WatcherClient resumes with `since` after every drop and hands the
// application each seq once, in order. No dependencies; one file.

export const PROTOCOL = 1;

/** Every close code the hub sends and whether a client reconnects after it (hub/closecodes.py). */
export const CLOSE_CODES = Object.freeze({
  1000: { name: "normal", reconnect: false },
  1002: { name: "protocol_error", reconnect: false },
  1003: { name: "unsupported_data", reconnect: false },
  1008: { name: "policy_violation", reconnect: false },
  1009: { name: "message_too_big", reconnect: false },
  1011: { name: "internal_error", reconnect: true },
  1012: { name: "service_restart", reconnect: true },
  4000: { name: "hello_timeout", reconnect: true },
  4001: { name: "replaced", reconnect: false },
  4004: { name: "unknown_session", reconnect: false },
  4005: { name: "session_ended", reconnect: false },
  4008: { name: "lagging", reconnect: true },
  4009: { name: "resync", reconnect: true },
  4029: { name: "too_many_errors", reconnect: false },
  4030: { name: "rate_limited", reconnect: true },
  4031: { name: "too_many_connections", reconnect: true },
  4032: { name: "room_full", reconnect: false },
});

/** Unknown codes (1006: the network dropped) mean: back off, reconnect, resume. */
export function shouldReconnect(code) {
  const known = CLOSE_CODES[code];
  return known === undefined ? true : known.reconnect;
}

const DEFAULT_MAX_MESSAGE_BYTES = 65_536;
const DEFAULT_MAX_BATCH = 500;
const BATCH_OVERHEAD = '{"type":"batch","frames":[]}'.length;
const METRIC_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,99}$/;
const UUID = /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/;
const TASK_EVENTS = new Set(["started", "status", "finished"]);
const TASK_STATUSES = new Set(["pending", "in_progress", "success", "failed", "skipped"]);
const METRICS_FIELDS = new Set(["type", "ts", "values", "task_id"]);
const TASK_FIELDS = new Set([
  "type", "ts", "task_id", "task_name", "event", "status", "duration_seconds", "metrics",
]);
// The close code this client uses when it gives up on a socket itself (no answer, offline).
const CLIENT_DROP = 4999;
const encoder = new TextEncoder();

/** Bad use of the client (a frame against the protocol's rules), or a connection closed for good. */
export class MirrorHubError extends Error {
  constructor(message, code = null, reason = "") {
    super(message);
    this.name = "MirrorHubError";
    this.code = code; // the close code when the connection ended for good
    this.reason = reason;
  }
}

/** http(s)://host:port or ws(s)://host:port plus `path` → a WebSocket URL. */
export function wsUrl(base, path) {
  let url = String(base).replace(/\/+$/, "");
  if (url.startsWith("https://")) url = "wss://" + url.slice(8);
  else if (url.startsWith("http://")) url = "ws://" + url.slice(7);
  if (!/^wss?:\/\//.test(url)) throw new MirrorHubError(`url must be ws(s):// or http(s)://, got ${base}`);
  return url + path;
}

function checkMetrics(values, where) {
  if (values === null || typeof values !== "object" || Array.isArray(values)) {
    throw new MirrorHubError(`${where} must be an object of metric name → number`);
  }
  const entries = Object.entries(values);
  if (entries.length > 200) throw new MirrorHubError(`${where}: at most 200 metrics per frame`);
  for (const [name, value] of entries) {
    if (!METRIC_NAME.test(name)) throw new MirrorHubError(`${where}: invalid metric name ${JSON.stringify(name)}`);
    if (typeof value !== "number" || !Number.isFinite(value) || Math.abs(value) > 1e12) {
      throw new MirrorHubError(`${where}.${name} must be a finite number within ±1e12, got ${value}`);
    }
  }
}

/**
 * Check a frame against the protocol's rules (docs/protocol.md, "Mirror → hub") and return a
 * copy with `ts` filled in. A frame the hub rejects could never be acked and every later seq
 * would wait behind it forever, so this runs before a seq is given.
 */
export function validateFrame(frame) {
  if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
    throw new MirrorHubError("a frame must be an object");
  }
  const kind = frame.type;
  if (kind !== "metrics" && kind !== "task") {
    throw new MirrorHubError(`frame type must be "metrics" or "task", got ${JSON.stringify(kind)}`);
  }
  if ("seq" in frame) throw new MirrorHubError("do not set seq: send() assigns it");
  const allowed = kind === "metrics" ? METRICS_FIELDS : TASK_FIELDS;
  for (const key of Object.keys(frame)) {
    if (!allowed.has(key)) throw new MirrorHubError(`unknown field ${JSON.stringify(key)} in a ${kind} frame`);
  }
  const out = { ...frame, ts: frame.ts ?? Date.now() / 1000 };
  if (typeof out.ts !== "number" || !Number.isFinite(out.ts) || out.ts < 0 || out.ts > 1e11) {
    throw new MirrorHubError(`ts must be Unix seconds within 0..1e11, got ${out.ts}`);
  }
  if (out.task_id !== undefined && (typeof out.task_id !== "string" || !UUID.test(out.task_id))) {
    throw new MirrorHubError(`task_id must be a UUID, got ${JSON.stringify(out.task_id)}`);
  }
  if (kind === "metrics") {
    checkMetrics(out.values, "values");
    return out;
  }
  if (out.task_id === undefined) throw new MirrorHubError("a task frame needs a task_id (a UUID)");
  if (typeof out.task_name !== "string" || out.task_name.length < 1 || out.task_name.length > 100) {
    throw new MirrorHubError("task_name must be 1–100 characters");
  }
  if (!TASK_EVENTS.has(out.event)) {
    throw new MirrorHubError(`event must be one of ${[...TASK_EVENTS].join(", ")}, got ${JSON.stringify(out.event)}`);
  }
  if (!TASK_STATUSES.has(out.status)) {
    throw new MirrorHubError(`status must be one of ${[...TASK_STATUSES].join(", ")}, got ${JSON.stringify(out.status)}`);
  }
  if (out.duration_seconds !== undefined) {
    const d = out.duration_seconds;
    if (typeof d !== "number" || !(d >= 0 && d <= 86_400)) throw new MirrorHubError("duration_seconds must be within 0..86400");
  }
  if (out.metrics !== undefined) checkMetrics(out.metrics, "metrics");
  return out;
}

// -- outbox stores ----------------------------------------------------------------------------

/** Unacked frames in memory: lost with the page, like any variable. */
class MemoryStore {
  async load() { return { lastSeq: 0, frames: [] }; }
  save(_frames, _lastSeq) { return Promise.resolve(); }
  drop(_upTo) {}
  clear() { return Promise.resolve(); }
  close() {}
}

/**
 * Unacked frames and the seq counter in IndexedDB, so a reload or a crashed tab resumes the
 * session with no gap and no seq given twice. A frame goes on the wire only after its
 * transaction committed: whatever the hub has, the store knows about.
 */
class IndexedDBStore {
  constructor(sessionId, name = "mirror-hub") {
    this.sessionId = sessionId;
    this.name = name;
    this.db = null;
  }

  range() {
    return IDBKeyRange.bound([this.sessionId, 0], [this.sessionId, Number.MAX_SAFE_INTEGER]);
  }

  async load() {
    if (typeof indexedDB === "undefined") throw new MirrorHubError('store "indexeddb" needs IndexedDB (a browser)');
    this.db = await new Promise((resolve, reject) => {
      const request = indexedDB.open(this.name, 1);
      request.onupgradeneeded = () => {
        request.result.createObjectStore("frames", { keyPath: ["session", "seq"] });
        request.result.createObjectStore("meta", { keyPath: "session" });
      };
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    const tx = this.db.transaction(["frames", "meta"], "readonly");
    const [meta, rows] = await Promise.all([
      idb(tx.objectStore("meta").get(this.sessionId)),
      idb(tx.objectStore("frames").getAll(this.range())),
    ]);
    return { lastSeq: meta ? meta.lastSeq : 0, frames: rows.map((r) => [r.seq, r.text]) };
  }

  save(frames, lastSeq) {
    const tx = this.db.transaction(["frames", "meta"], "readwrite");
    const store = tx.objectStore("frames");
    for (const [seq, text] of frames) store.put({ session: this.sessionId, seq, text });
    tx.objectStore("meta").put({ session: this.sessionId, lastSeq });
    return done(tx);
  }

  drop(upTo) {
    // Best effort: after a reload, frames up to the welcome's acked_seq are dropped anyway.
    if (!this.db) return;
    const tx = this.db.transaction("frames", "readwrite");
    tx.objectStore("frames").delete(IDBKeyRange.bound([this.sessionId, 0], [this.sessionId, upTo]));
  }

  clear() {
    if (!this.db) return Promise.resolve();
    const tx = this.db.transaction(["frames", "meta"], "readwrite");
    tx.objectStore("frames").delete(this.range());
    tx.objectStore("meta").delete(this.sessionId);
    return done(tx);
  }

  close() {
    this.db?.close();
    this.db = null;
  }
}

function idb(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = tx.onabort = () => reject(tx.error || new Error("IndexedDB transaction aborted"));
  });
}

// -- what both clients share ------------------------------------------------------------------

// Browsers (and workers) tell us when the network goes and comes back; Node does not.
const hasWindowEvents = typeof globalThis.addEventListener === "function";

function pickWebSocket(given) {
  const ctor = given ?? globalThis.WebSocket;
  if (typeof ctor !== "function") {
    throw new MirrorHubError("no WebSocket: pass one ({WebSocket}), or run Node 22+, or Node 20 with --experimental-websocket");
  }
  return ctor;
}

/** One logical connection: reconnect loop, backoff with full jitter, online/offline, events. */
class Connection extends EventTarget {
  constructor(options, role) {
    super();
    if (!options || !options.url || !options.sessionId) throw new MirrorHubError("url and sessionId are required");
    this.sessionId = String(options.sessionId);
    this.url = wsUrl(options.url, `/ws/sessions/${encodeURIComponent(this.sessionId)}/${role}`);
    this.token = options.token ?? null;
    this.onTokenExpired = options.onTokenExpired ?? null;
    this.WebSocketCtor = pickWebSocket(options.WebSocket);
    this.backoffInitialMs = options.backoffInitialMs ?? 100;
    this.backoffMaxMs = options.backoffMaxMs ?? 5_000;
    this.handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
    this.state = "idle"; // idle | connecting | open | backoff | offline | ended | closed
    this.closeCode = null; // set once the client stopped for good
    this.closeReason = "";
    this.connections = 0; // welcomes received
    this.ws = null;
    this.welcomed = false;
    this.attempt = 0;
    this.timer = null;
    this.lastError = null; // the latest `error` message from the hub
    this.lastMessageAt = 0;
    this.onOnline = () => this.wake("online");
    this.onOffline = () => {
      // The browser knows the network is gone: do not wait for TCP to notice (30+ s).
      if (this.stopped) return;
      this.drop("offline");
      clearTimeout(this.timer);
      this.setState("offline");
    };
    this.onVisible = () => {
      if (globalThis.document?.visibilityState === "visible") this.wake("visible");
    };
  }

  /** Reconnections so far (welcomes after the first). */
  get reconnects() { return Math.max(0, this.connections - 1); }

  get stopped() { return this.state === "ended" || this.state === "closed"; }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", { state });
  }

  listen() {
    if (!hasWindowEvents) return;
    globalThis.addEventListener("online", this.onOnline);
    globalThis.addEventListener("offline", this.onOffline);
    globalThis.document?.addEventListener("visibilitychange", this.onVisible);
  }

  unlisten() {
    if (!hasWindowEvents) return;
    globalThis.removeEventListener("online", this.onOnline);
    globalThis.removeEventListener("offline", this.onOffline);
    globalThis.document?.removeEventListener("visibilitychange", this.onVisible);
  }

  isOpen() { return this.ws !== null && this.ws.readyState === 1; }

  /** Connect now instead of waiting out the backoff (back online, tab visible again). */
  wake(why) {
    if (this.stopped || this.state === "idle") return;
    if (this.isOpen() || this.state === "connecting") return;
    this.attempt = 0;
    clearTimeout(this.timer);
    this.timer = null;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    if (hasWindowEvents && globalThis.navigator?.onLine === false) {
      this.setState("offline"); // the `online` event reconnects
      return;
    }
    this.setState("connecting");
    let ws;
    try {
      ws = new this.WebSocketCtor(this.url);
    } catch (error) {
      this.stop(1006, `cannot open ${this.url}: ${error.message}`);
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    const handshake = setTimeout(() => ws === this.ws && this.drop("no welcome in time"), this.handshakeTimeoutMs);
    ws.onopen = () => {
      this.lastError = null;
      ws.send(JSON.stringify(this.hello()));
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastMessageAt = Date.now();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === "welcome") {
        clearTimeout(handshake);
        this.welcomed = true;
        this.attempt = 0; // the hub is healthy: the next drop starts the backoff afresh
        this.connections += 1;
        this.setState("open");
        this.emit("welcome", message);
        this.onWelcome(message);
      } else if (message.type === "error") {
        this.lastError = message;
        this.onHubError(message);
      } else {
        this.onMessage(message);
      }
    };
    // A close before open (refused, DNS, HTTP 403/503) is a close like any other: reconnect.
    ws.onclose = (event) => {
      clearTimeout(handshake);
      if (ws !== this.ws) return;
      this.ws = null;
      this.closed(event.code || 1006, event.reason || "");
    };
    ws.onerror = () => {
      // Browsers follow with a close event; Node 20's WebSocket does not when the connection
      // fails (refused while the hub restarts), so a socket that never opened is closed here.
      setTimeout(() => {
        if (ws !== this.ws || ws.readyState === 1) return;
        clearTimeout(handshake);
        this.ws = null;
        ws.onclose = ws.onmessage = ws.onopen = null;
        this.closed(1006, "connection failed");
      }, 0);
    };
  }

  /** Give up on the current socket (it may be half-dead) and reconnect. */
  drop(why) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onclose = ws.onmessage = ws.onopen = null;
    try {
      ws.close(CLIENT_DROP, why.slice(0, 100));
    } catch {
      // already closing
    }
    this.closed(1006, why);
  }

  closed(code, reason) {
    this.onDisconnected();
    if (this.lastError && code !== 1000 && !shouldReconnect(code)) {
      reason = `${reason} (${this.lastError.code}: ${this.lastError.message})`; // e.g. 1002
    }
    const final = this.finalClose(code, reason);
    this.emit("close", { code, reason, reconnect: !final });
    if (final || this.stopped || this.state === "offline") return;
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    // Exponential backoff with full jitter: mirrors dropped together do not come back together.
    const cap = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** this.attempt);
    this.attempt += 1;
    this.setState("backoff");
    this.timer = setTimeout(() => {
      this.timer = null;
      this.connect();
    }, Math.random() * cap);
  }

  /** Close codes after which reconnecting cannot help; true when the client will not reconnect now. */
  finalClose(code, reason) {
    if (code === 1008 && this.onTokenExpired) {
      this.renewToken(reason);
      return true;
    }
    if (shouldReconnect(code)) return false;
    this.stop(code, reason);
    return true;
  }

  async renewToken(reason) {
    // 1008: the credential is missing, expired or out of scope. Ask for a new one; the same
    // token would be refused forever, so no new token means stop.
    this.setState("backoff");
    let token = null;
    try {
      token = await this.onTokenExpired({ reason, sessionId: this.sessionId });
    } catch (error) {
      reason = `${reason}; onTokenExpired failed: ${error?.message ?? error}`;
    }
    if (this.stopped) return;
    if (typeof token !== "string" || !token || token === this.token) {
      this.stop(1008, reason);
      return;
    }
    this.token = token;
    this.connect();
  }

  stop(code, reason) {
    if (this.stopped) return;
    this.closeCode = code;
    this.closeReason = reason;
    clearTimeout(this.timer);
    this.unlisten();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onclose = ws.onmessage = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
    this.onDisconnected();
    this.setState(this.isEnded() ? "ended" : "closed");
    if (code !== 1000) {
      this.emit("error", { code, reason, message: `connection closed for good: ${code} ${reason}`.trim() });
    }
    this.onStopped();
  }

  isEnded() { return false; }
  onStopped() {}
  onDisconnected() {}
  onHubError(message) {
    this.emit("error", { code: null, reason: message.code, message: message.message, hub: message });
  }
}

// -- MirrorClient -----------------------------------------------------------------------------

/**
 * Streams one session. `send(frame)` returns the frame's seq, or `false` when `maxUnacked`
 * frames wait for acks: then nothing is taken (and nothing dropped); send it again after the
 * `drain` event.
 */
export class MirrorClient extends Connection {
  constructor(options) {
    super(options, "mirror");
    const store = options.store ?? "memory";
    if (store === "memory") this.store = new MemoryStore();
    else if (store === "indexeddb") this.store = new IndexedDBStore(this.sessionId);
    else throw new MirrorHubError(`store must be "memory" or "indexeddb", got ${JSON.stringify(store)}`);
    this.maxUnacked = options.maxUnacked ?? 20_000;
    if (!(Number.isInteger(this.maxUnacked) && this.maxUnacked > 0)) throw new MirrorHubError("maxUnacked must be a positive integer");
    // With frames waiting for acks and nothing at all heard for this long, the socket is taken
    // for dead: a browser cannot send WebSocket pings, and acks normally come within ~50 ms.
    this.staleMs = options.staleMs ?? 10_000;
    // Frames queued within this interval share one message (a batch): the hub limits messages.
    this.minMessageIntervalMs = options.minMessageIntervalMs ?? 10;
    this.frames = new Map(); // seq → JSON text, unacked
    this.lastSeq = 0; // highest seq given
    this.savedSeq = 0; // highest seq committed to the store (only those go on the wire)
    this.ackedSeq = 0; // everything <= this is committed in the hub's database
    this.cursor = 1; // next seq to write on this connection
    this.rewoundTo = 0;
    this.maxBatch = DEFAULT_MAX_BATCH;
    this.maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES;
    this.unsaved = []; // [seq, text] not yet handed to the store
    this.saving = false;
    this.writeTimer = null;
    this.staleTimer = null;
    this.lastWriteAt = 0;
    this.outstandingSince = 0;
    this.ready = false;
    this.starting = null;
    this.ending = false;
    this.endSent = false;
    this.ended = false;
    this.full = false;
    this.waiters = new Set(); // {test, resolve, reject}
    this.framesWritten = 0; // frames put on the wire, resends included
  }

  /** Frames given a seq and not yet acked. */
  get unacked() { return this.frames.size; }

  /** Whether send() would take a frame now. */
  get writable() { return this.ready && !this.ending && !this.stopped && this.frames.size < this.maxUnacked; }

  /** Load what the store kept (with IndexedDB a reloaded page resumes), then connect. */
  start() {
    if (!this.starting) {
      this.starting = (async () => {
        const kept = await this.store.load();
        for (const [seq, text] of kept.frames) this.frames.set(seq, text);
        let top = kept.lastSeq;
        for (const seq of this.frames.keys()) top = Math.max(top, seq);
        this.lastSeq = this.savedSeq = top;
        this.ackedSeq = this.frames.size ? Math.min(...this.frames.keys()) - 1 : top;
        this.cursor = this.ackedSeq + 1;
        this.ready = true;
        this.listen();
        this.connect();
      })();
    }
    return this.starting;
  }

  send(frame) {
    if (!this.ready) throw new MirrorHubError("await start() before send()");
    if (this.ending) throw new MirrorHubError("end() was called; no more frames");
    if (this.stopped) {
      throw new MirrorHubError(`the client stopped: ${this.closeCode} ${this.closeReason}`.trim(), this.closeCode, this.closeReason);
    }
    const checked = validateFrame(frame);
    const text = JSON.stringify({ ...checked, seq: this.lastSeq + 1 });
    const size = encoder.encode(text).length;
    if (size + BATCH_OVERHEAD > this.maxMessageBytes) {
      throw new MirrorHubError(`frame of ${size} bytes is over the hub's limit of ${this.maxMessageBytes}`);
    }
    if (this.frames.size >= this.maxUnacked) {
      this.full = true; // `drain` follows when acks make room
      return false;
    }
    const seq = (this.lastSeq += 1);
    this.frames.set(seq, text);
    this.unsaved.push([seq, text]);
    this.save();
    return seq;
  }

  /** Resolves when every frame sent so far is acked; rejects if the client stops for good. */
  flush() {
    const target = this.lastSeq;
    return this.until(() => this.ackedSeq >= target);
  }

  /** Waits for every ack, sends `end`, resolves with the last seq on `ended` (or 4005). */
  async end() {
    await this.flush();
    this.ending = true;
    this.scheduleWrite();
    await this.until(() => this.ended);
    return this.lastSeq;
  }

  /** Stop for good. Unacked frames stay in the store (with IndexedDB, a later start resumes). */
  close() {
    this.stop(1000, "closed by client");
    this.store.close();
  }

  // -- internals ------------------------------------------------------------------------------

  until(test) {
    if (test()) return Promise.resolve();
    if (this.stopped) return Promise.reject(this.stoppedError());
    return new Promise((resolve, reject) => this.waiters.add({ test, resolve, reject }));
  }

  stoppedError() {
    const text = `connection closed for good: ${this.closeCode} ${this.closeReason}`.trim();
    return new MirrorHubError(text, this.closeCode, this.closeReason);
  }

  progress() {
    for (const waiter of this.waiters) {
      if (waiter.test()) {
        this.waiters.delete(waiter);
        waiter.resolve();
      }
    }
  }

  save() {
    // One store transaction at a time, holding every frame queued meanwhile.
    if (this.saving || !this.unsaved.length) return;
    const batch = this.unsaved;
    const upTo = batch[batch.length - 1][0];
    this.unsaved = [];
    this.saving = true;
    this.store.save(batch, upTo).then(
      () => {
        this.saving = false;
        this.savedSeq = Math.max(this.savedSeq, upTo);
        this.scheduleWrite();
        this.save();
      },
      (error) => {
        this.saving = false;
        this.stop(1011, `store failed: ${error?.message ?? error}`);
      },
    );
  }

  hello() { return { type: "hello", token: this.token, protocol: PROTOCOL }; }

  onWelcome(welcome) {
    const hubSeq = Number(welcome.last_seq);
    this.maxBatch = Number(welcome.max_batch ?? this.maxBatch);
    this.maxMessageBytes = Number(welcome.max_message_bytes ?? this.maxMessageBytes);
    if (hubSeq > this.lastSeq) {
      if (this.lastSeq) {
        this.stop(4001, `hub has seq ${hubSeq}, this client only ${this.lastSeq}: another writer used the session`);
        return;
      }
      // A new client on a session that has frames (an app restart without a store): go on after them.
      this.lastSeq = this.savedSeq = this.ackedSeq = this.cursor = hubSeq;
    }
    this.onAck(Number(welcome.acked_seq ?? 0)); // acked_seq is an implicit ack
    // Frames the hub accepted but has not committed yet (acked_seq < seq <= last_seq) wait for
    // their ack here; every frame after last_seq is resent.
    this.cursor = Math.max(hubSeq, this.ackedSeq) + 1;
    this.rewoundTo = 0;
    this.endSent = false;
    this.outstandingSince = Date.now();
    this.scheduleWrite();
    this.watchStale();
  }

  onMessage(message) {
    if (message.type === "ack") {
      this.onAck(Number(message.seq));
    } else if (message.type === "ended") {
      this.finish(Number(message.last_seq));
    }
  }

  onAck(seq) {
    seq = Math.min(seq, this.lastSeq);
    if (seq <= this.ackedSeq) return;
    for (let s = this.ackedSeq + 1; s <= seq; s++) this.frames.delete(s);
    this.ackedSeq = seq;
    this.store.drop(seq);
    this.emit("ack", { seq, unacked: this.frames.size });
    if (this.full && this.frames.size < this.maxUnacked) {
      this.full = false;
      this.emit("drain", { unacked: this.frames.size });
    }
    this.scheduleWrite(); // `end` may be due
    this.progress();
  }

  onHubError(message) {
    const expected = message.expected_seq;
    if (message.code === "duplicate_seq") {
      // The hub has that frame and everything before expected_seq: skip ahead.
      if (Number.isInteger(expected) && expected > this.cursor) {
        this.cursor = Math.min(expected, this.lastSeq + 1);
        this.scheduleWrite();
      }
      return;
    }
    if (message.code === "seq_gap") {
      const want = Number.isInteger(expected) ? expected : this.ackedSeq + 1;
      if (want <= this.ackedSeq) {
        this.stop(1002, `hub expects seq ${want}, already acked: ${message.message}`);
        return;
      }
      // Frames in flight behind the gap report the same expected seq: rewind once.
      if (want < this.cursor && want !== this.rewoundTo) {
        this.rewoundTo = this.cursor = want;
        this.scheduleWrite();
      }
      return;
    }
    // invalid_frame, malformed_json, end_mismatch …: resending cannot fix any of them.
    super.onHubError(message);
    const at = message.seq != null ? ` (seq ${message.seq})` : "";
    this.stop(1002, `${message.code}: ${message.message}${at}`);
  }

  scheduleWrite() {
    if (this.writeTimer !== null || !this.isOpen() || !this.welcomed) return;
    const wait = Math.max(0, this.lastWriteAt + this.minMessageIntervalMs - Date.now());
    this.writeTimer = setTimeout(() => {
      this.writeTimer = null;
      this.write();
    }, wait);
  }

  write() {
    if (!this.isOpen() || !this.welcomed) return;
    this.cursor = Math.max(this.cursor, this.ackedSeq + 1);
    const idle = this.cursor - 1 <= this.ackedSeq && !this.endSent;
    if (this.cursor <= this.savedSeq) {
      if (idle) this.outstandingSince = Date.now();
      const first = this.cursor;
      this.ws.send(this.nextMessage());
      this.lastWriteAt = Date.now();
      this.emit("sent", { first, last: this.cursor - 1 });
      if (this.cursor <= this.savedSeq) this.scheduleWrite();
    } else if (this.ending && !this.endSent && this.ackedSeq === this.lastSeq) {
      this.endSent = true;
      this.outstandingSince = Date.now();
      this.ws.send(JSON.stringify({ type: "end", last_seq: this.lastSeq }));
    }
  }

  nextMessage() {
    // From the cursor on: one frame, or a batch within max_batch and the size limit.
    let budget = this.maxMessageBytes - BATCH_OVERHEAD;
    const parts = [];
    let seq = this.cursor;
    while (seq <= this.savedSeq && parts.length < this.maxBatch) {
      const text = this.frames.get(seq);
      budget -= encoder.encode(text).length + 1;
      if (parts.length && budget < 0) break;
      parts.push(text);
      seq += 1;
    }
    this.cursor = seq;
    this.framesWritten += parts.length;
    return parts.length === 1 ? parts[0] : `{"type":"batch","frames":[${parts.join(",")}]}`;
  }

  watchStale() {
    // If frames (or `end`) wait for an answer and nothing at all comes back for staleMs, the
    // connection is dead even if the browser has not noticed: a cut network can keep a
    // WebSocket "open" for minutes.
    if (this.staleTimer !== null) return;
    this.staleTimer = setInterval(() => {
      const waiting = this.cursor - 1 > this.ackedSeq || this.endSent;
      const quiet = Date.now() - Math.max(this.lastMessageAt, this.outstandingSince);
      if (waiting && quiet > this.staleMs) this.drop(`no answer from the hub for ${quiet} ms`);
    }, Math.max(50, this.staleMs / 4));
  }

  onDisconnected() {
    clearTimeout(this.writeTimer);
    this.writeTimer = null;
    clearInterval(this.staleTimer);
    this.staleTimer = null;
  }

  closed(code, reason) {
    // After our `end` with everything acked, a 1000 close (or 4005 on a reconnect) is success.
    if (this.ending && (code === 1000 || code === 4005) && this.ackedSeq === this.lastSeq) {
      this.onDisconnected();
      this.finish(this.lastSeq);
      return;
    }
    super.closed(code, reason);
  }

  finish(lastSeq) {
    if (!this.ended) {
      this.ended = true;
      this.emit("ended", { lastSeq });
    }
    this.stop(1000, "session ended");
    this.store.clear().catch(() => {});
  }

  isEnded() { return this.ended; }

  onStopped() {
    for (const waiter of this.waiters) {
      if (waiter.test()) waiter.resolve();
      else waiter.reject(this.stoppedError());
    }
    this.waiters.clear();
  }
}

// -- WatcherClient ----------------------------------------------------------------------------

/**
 * Follows one session. Events: `snapshot`, `frame` (metrics and task frames, each seq once, in
 * order), `presence`, `ended`, plus `state`, `welcome`, `close` and `error`. After any drop —
 * 4008 (read too slowly) and 4009 included — it reconnects with `since` = the last seq shown.
 */
export class WatcherClient extends Connection {
  constructor(options) {
    super(options, "watch");
    // Protocol 2: the hub sends frames in `batch` messages (fewer messages, the same frames).
    this.protocol = options.protocol ?? 2;
    if (this.protocol !== 1 && this.protocol !== 2) throw new MirrorHubError("protocol must be 1 or 2");
    // How long the hub may hold a frame to batch it with the next ones (protocol 2; 0: never).
    this.maxDelayMs = options.maxDelayMs ?? 0;
    if (!Number.isInteger(this.maxDelayMs) || this.maxDelayMs < 0) throw new MirrorHubError("maxDelayMs must be an integer >= 0");
    this.lastSeq = options.since ?? null; // null: start from a snapshot
    this.gaps = 0; // gaps seen on the wire (each repaired by a resume, never shown)
    this.duplicates = 0; // frames dropped because their seq was already shown
    this.ended = false;
  }

  start() {
    if (this.state === "idle") {
      this.listen();
      this.connect();
    }
  }

  close() { this.stop(1000, "closed by client"); }

  hello() {
    const hello = { type: "hello", token: this.token, protocol: this.protocol };
    if (this.lastSeq !== null) hello.since = this.lastSeq;
    if (this.protocol === 2 && this.maxDelayMs > 0) hello.max_delay_ms = this.maxDelayMs;
    return hello;
  }

  onWelcome(_welcome) {}

  onMessage(message) {
    switch (message.type) {
      case "batch": { // protocol 2 delivers frames in batches; each counts like a single frame
        const ws = this.ws;
        for (const frame of message.frames ?? []) {
          if (this.ws !== ws) return; // a gap in the batch dropped the connection
          this.onMessage(frame);
        }
        return;
      }
      case "metrics":
      case "task":
        this.onFrame(message);
        return;
      case "snapshot":
        this.lastSeq = Number(message.last_seq);
        this.emit("snapshot", message);
        if (message.presence) this.emit("presence", message.presence);
        if (message.ended) this.onEnded(this.lastSeq);
        return;
      case "presence":
        this.emit("presence", message);
        return;
      case "ended":
        this.onEnded(Number(message.last_seq));
        return;
    }
  }

  onFrame(frame) {
    const seq = Number(frame.seq);
    if (this.lastSeq !== null && seq <= this.lastSeq) {
      this.duplicates += 1;
      return;
    }
    if (this.lastSeq !== null && seq > this.lastSeq + 1) {
      // Never show a gap: resume from what was shown; the hub replays the rest.
      this.gaps += 1;
      this.drop(`gap: frames ${this.lastSeq + 1}..${seq - 1} missing`);
      return;
    }
    this.lastSeq = seq;
    this.emit("frame", frame);
  }

  onEnded(lastSeq) {
    if (this.lastSeq !== null && lastSeq > this.lastSeq) {
      this.gaps += 1;
      this.drop(`ended at ${lastSeq}, shown up to ${this.lastSeq}`);
      return;
    }
    this.ended = true;
    this.emit("ended", { lastSeq });
    this.stop(1000, "session ended");
  }

  isEnded() { return this.ended; }
}
