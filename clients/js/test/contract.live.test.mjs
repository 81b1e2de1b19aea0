// Bad use fails early and clearly, against a real hub (started by tests/browser/test_js_client.py):
// a frame against the protocol's rules throws from send(); an expired token asks the
// onTokenExpired callback instead of looping; a full outbox pushes back and never drops.
import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";
import { MirrorClient, MirrorHubError, WatcherClient, validateFrame } from "../mirror-hub.js";

const { HUB_URL, STAFF_TOKEN, EXPIRED_SESSION_ID, EXPIRED_TOKEN, FRESH_TOKEN } = process.env;
const TASK = crypto.randomUUID(); // task ids are unique across sessions, so one per run

async function createSession() {
  const response = await fetch(`${HUB_URL}/sessions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${STAFF_TOKEN}`, "Content-Type": "application/json" },
    body: JSON.stringify({ child_name: "Node Test", child_age: 7 }),
  });
  assert.equal(response.status, 201);
  return response.json();
}

async function storedSeqs(sessionId, metric = "accuracy") {
  const response = await fetch(`${HUB_URL}/sessions/${sessionId}/series?metric=${metric}`, {
    headers: { Authorization: `Bearer ${STAFF_TOKEN}` },
  });
  return (await response.json()).points.map((p) => p.seq);
}

/** A WebSocket that counts how often the client opened one. */
function countingWebSocket() {
  const opened = [];
  class Counting extends WebSocket {
    constructor(url) {
      super(url);
      opened.push(url);
    }
  }
  return { Counting, opened };
}

test("frames against the protocol's rules throw from send(), before a seq is given", async () => {
  const session = await createSession();
  const client = new MirrorClient({ url: HUB_URL, sessionId: session.id, token: session.mirror_token });
  await client.start();
  const bad = [
    [{ type: "metrics", values: { accuracy: NaN } }, /finite number/],
    [{ type: "metrics", values: { "1st": 0.5 } }, /invalid metric name/],
    [{ type: "metrics", values: { a: 2e12 } }, /1e12/],
    [{ type: "metrics", values: Object.fromEntries(Array.from({ length: 201 }, (_, i) => [`m${i}`, 1])) }, /at most 200/],
    [{ type: "metrics", values: {}, colour: "red" }, /unknown field "colour"/],
    [{ type: "metrics", values: {}, seq: 9 }, /send\(\) assigns it/],
    [{ type: "metrics", values: {}, task_id: "not-a-uuid" }, /UUID/],
    [{ type: "metrics", values: {}, ts: -1 }, /ts must be/],
    [{ type: "task", task_id: TASK, task_name: "squat", event: "begun", status: "in_progress" }, /event must be one of/],
    [{ type: "task", task_id: TASK, task_name: "squat", event: "started", status: "done" }, /status must be one of/],
    [{ type: "task", task_id: TASK, task_name: "", event: "started", status: "pending" }, /task_name/],
    [{ type: "task", task_id: TASK, task_name: "squat", event: "finished", status: "success", duration_seconds: 90_000 }, /duration_seconds/],
    [{ type: "task", task_name: "squat", event: "started", status: "pending" }, /needs a task_id/],
    [{ type: "end" }, /"metrics" or "task"/],
  ];
  for (const [frame, message] of bad) {
    assert.throws(() => client.send(frame), (e) => e instanceof MirrorHubError && message.test(e.message), JSON.stringify(frame));
    assert.throws(() => validateFrame(frame), message);
  }
  assert.equal(client.lastSeq, 0, "no seq was given to a bad frame");
  assert.equal(client.send({ type: "metrics", values: { accuracy: 0.5 } }), 1);
  assert.equal(client.send({ type: "task", task_id: TASK, task_name: "squat", event: "started", status: "in_progress" }), 2);
  assert.equal(await client.end(), 2);
  assert.deepEqual(await storedSeqs(session.id), [1]);
});

test("an expired token with no new one stops at once: one attempt, no reconnect loop", async () => {
  const { Counting, opened } = countingWebSocket();
  const asked = [];
  const client = new MirrorClient({
    url: HUB_URL, sessionId: EXPIRED_SESSION_ID, token: EXPIRED_TOKEN, WebSocket: Counting,
    onTokenExpired: (info) => { asked.push(info.reason); return null; },
  });
  await client.start();
  client.send({ type: "metrics", values: { accuracy: 0.1 } });
  await assert.rejects(client.flush(), (e) => e instanceof MirrorHubError && e.code === 1008);
  assert.equal(client.state, "closed");
  assert.equal(opened.length, 1);
  assert.equal(asked.length, 1);
  assert.match(asked[0], /expired/);
  assert.equal(client.unacked, 1, "the frame is kept, not dropped");
});

test("an expired token asks the callback for a new one and streams on with it", async () => {
  const { Counting, opened } = countingWebSocket();
  const asked = [];
  const client = new MirrorClient({
    url: HUB_URL, sessionId: EXPIRED_SESSION_ID, token: EXPIRED_TOKEN, WebSocket: Counting,
    onTokenExpired: async (info) => { asked.push(info.reason); return FRESH_TOKEN; },
  });
  await client.start();
  for (const accuracy of [0.1, 0.2, 0.3]) client.send({ type: "metrics", values: { accuracy } });
  assert.equal(await client.end(), 3);
  assert.equal(asked.length, 1);
  assert.equal(opened.length, 2);
  assert.equal(client.state, "ended");
});

test("a full outbox pushes back (send returns false, then drain) and never drops", async () => {
  const session = await createSession();
  const client = new MirrorClient({ url: HUB_URL, sessionId: session.id, token: session.mirror_token, maxUnacked: 50 });
  await client.start();
  let taken = 0;
  let refused = 0;
  for (let i = 1; i <= 400; ) {
    const seq = client.send({ type: "metrics", values: { accuracy: i / 1000 } });
    if (seq === false) {
      refused += 1;
      assert.equal(client.unacked, 50);
      assert.equal(client.writable, false);
      await once(client, "drain");
      continue;
    }
    assert.equal(seq, i);
    taken += 1;
    i += 1;
  }
  assert.ok(refused > 0, "the outbox never filled");
  assert.equal(await client.end(), 400);
  assert.equal(taken, 400);
  assert.deepEqual(await storedSeqs(session.id), Array.from({ length: 400 }, (_, i) => i + 1));
});

test("a watcher of an ended session replays it once and stops; batches are accepted", async () => {
  const session = await createSession();
  const mirror = new MirrorClient({ url: HUB_URL, sessionId: session.id, token: session.mirror_token });
  await mirror.start();
  for (let i = 1; i <= 20; i++) mirror.send({ type: "metrics", values: { accuracy: i / 100 } });
  await mirror.end();
  const watcher = new WatcherClient({ url: HUB_URL, sessionId: session.id, token: STAFF_TOKEN, since: 0 });
  const seen = [];
  watcher.addEventListener("frame", (e) => seen.push(e.detail.seq));
  const ended = once(watcher, "ended");
  watcher.start();
  await ended;
  assert.deepEqual(seen, Array.from({ length: 20 }, (_, i) => i + 1));
  // Protocol 2 batches: a batch of frames counts like single frames (dedup and all).
  watcher.onMessage({ type: "batch", frames: [{ type: "metrics", seq: 20, values: {} }] });
  assert.equal(watcher.duplicates, 1);
  assert.equal(watcher.state, "ended");
});

test("watchers speak protocol 2 (batches) by default and 1 on request: the same frames", async () => {
  const session = await createSession();
  const mirror = new MirrorClient({ url: HUB_URL, sessionId: session.id, token: session.mirror_token });
  await mirror.start();
  for (let i = 1; i <= 50; i++) mirror.send({ type: "metrics", values: { accuracy: i / 100 } });
  await mirror.end();
  /** A WebSocket that keeps the type of every message the hub sent. */
  function recording(types) {
    return class Recording extends WebSocket {
      constructor(url) {
        super(url);
        this.addEventListener("message", (e) => types.push(JSON.parse(e.data).type));
      }
    };
  }
  const runs = [];
  for (const options of [{ maxDelayMs: 50 }, { protocol: 1 }]) {
    const types = [];
    const watcher = new WatcherClient({
      url: HUB_URL, sessionId: session.id, token: STAFF_TOKEN, since: 0, WebSocket: recording(types), ...options,
    });
    const seen = [];
    let welcome = null;
    watcher.addEventListener("welcome", (e) => (welcome = e.detail));
    watcher.addEventListener("frame", (e) => seen.push(e.detail.seq));
    const ended = once(watcher, "ended");
    watcher.start();
    await ended;
    runs.push({ seen, welcome, types });
  }
  const [batched, single] = runs;
  const all = Array.from({ length: 50 }, (_, i) => i + 1);
  assert.deepEqual(batched.seen, all);
  assert.deepEqual(single.seen, all);
  assert.equal(batched.welcome.protocol, 2);
  assert.equal(batched.welcome.max_delay_ms, 50);
  assert.equal(single.welcome.protocol, 1);
  assert.deepEqual(batched.types, ["welcome", "batch", "ended"]); // the replay in one batch
  assert.equal(single.types.filter((t) => t === "metrics").length, 50);
  assert.throws(() => new WatcherClient({ url: HUB_URL, sessionId: "s", protocol: 3 }), /protocol/);
  assert.throws(() => new WatcherClient({ url: HUB_URL, sessionId: "s", maxDelayMs: -1 }), /maxDelayMs/);
});

test("a watcher never shows a gap: it drops the connection and resumes with since", async () => {
  const session = await createSession();
  const mirror = new MirrorClient({ url: HUB_URL, sessionId: session.id, token: session.mirror_token });
  await mirror.start();
  for (let i = 1; i <= 20; i++) mirror.send({ type: "metrics", values: { accuracy: i / 100 } });
  await mirror.flush();
  const watcher = new WatcherClient({ url: HUB_URL, sessionId: session.id, token: STAFF_TOKEN, since: 0, backoffInitialMs: 10 });
  const seen = [];
  let welcomes = 0;
  watcher.addEventListener("welcome", () => (welcomes += 1));
  watcher.addEventListener("frame", (e) => seen.push([e.detail.seq, e.detail.values.accuracy]));
  watcher.start();
  while (seen.length < 20) await once(watcher, "frame");
  // A frame that skips ahead (as a broken relay would deliver it) is not shown; the watcher
  // reconnects with since=20 and the hub sends what really follows.
  watcher.onMessage({ type: "metrics", seq: 25, ts: 1, values: { accuracy: 9 } });
  assert.equal(watcher.gaps, 1);
  while (welcomes < 2) await once(watcher, "welcome");
  const ended = once(watcher, "ended");
  for (let i = 21; i <= 30; i++) mirror.send({ type: "metrics", values: { accuracy: i / 100 } });
  await mirror.end();
  await ended;
  assert.deepEqual(seen, Array.from({ length: 30 }, (_, i) => [i + 1, (i + 1) / 100]));
});

test("the base URL may be http(s) or ws(s); anything else is refused at construction", () => {
  assert.throws(() => new MirrorClient({ url: "ftp://x", sessionId: "s" }), MirrorHubError);
  assert.throws(() => new MirrorClient({ url: HUB_URL }), /sessionId/);
  assert.throws(() => new MirrorClient({ url: HUB_URL, sessionId: "s", store: "disk" }), /store/);
  assert.throws(() => new MirrorClient({ url: HUB_URL, sessionId: "s", maxUnacked: 0 }), /maxUnacked/);
});
