// Compiled with `tsc --noEmit` (tests/browser/test_js_client.py): the declarations describe the module's
// real use, and wrong use is a type error.
import {
  CLOSE_CODES, MirrorClient, MirrorHubError, PROTOCOL, WatcherClient, shouldReconnect, validateFrame, wsUrl,
} from "../mirror-hub.js";
import type { Frame, FrameInput, Snapshot } from "../mirror-hub.js";

const mirror = new MirrorClient({
  url: "ws://127.0.0.1:8000", sessionId: "4f6c", token: "t", store: "indexeddb", maxUnacked: 100,
  onTokenExpired: async ({ reason }) => (reason ? "new-token" : null),
});
await mirror.start();
const seq: number | false = mirror.send({ type: "metrics", values: { accuracy: 0.9 } });
mirror.send({ type: "task", task_id: "0b9f", task_name: "squat", event: "finished", status: "success", duration_seconds: 3 });
mirror.addEventListener("ack", (e) => console.log(e.detail.seq + e.detail.unacked));
mirror.addEventListener("drain", (e) => console.log(e.detail.unacked));
mirror.addEventListener("state", (e) => console.log(e.detail.state === "offline"));
mirror.addEventListener("sent", (e) => console.log(e.detail.first, e.detail.last));
await mirror.flush();
const last: number = await mirror.end();
const counts: number = mirror.unacked + mirror.ackedSeq + mirror.lastSeq + mirror.reconnects;
console.log(seq, last, counts, mirror.writable, mirror.closeCode);

const watcher = new WatcherClient({ url: "http://127.0.0.1:8000", sessionId: "4f6c", token: "t", since: 0 });
watcher.addEventListener("frame", (e) => {
  const f: Frame = e.detail;
  console.log(f.seq, f.type === "metrics" ? f.values.accuracy : f.task_name);
});
watcher.addEventListener("snapshot", (e) => { const s: Snapshot = e.detail; console.log(s.last_seq); });
watcher.addEventListener("presence", (e) => console.log(e.detail.mirror, e.detail.watchers));
watcher.addEventListener("ended", (e) => console.log(e.detail.lastSeq));
watcher.start();
console.log(watcher.lastSeq, watcher.gaps, watcher.duplicates);
const oldWatcher = new WatcherClient({ url: "ws://h", sessionId: "s", protocol: 1 });
const slowWatcher = new WatcherClient({ url: "ws://h", sessionId: "s", maxDelayMs: 100 });
const version: 1 | 2 = oldWatcher.protocol;
console.log(version, slowWatcher.maxDelayMs);
watcher.close();

const frame: FrameInput = validateFrame({ type: "metrics", values: { a: 1 } });
console.log(frame, PROTOCOL, CLOSE_CODES[4008].reconnect, shouldReconnect(1006), wsUrl("http://h", "/x"));
try { mirror.send(frame); } catch (error) { if (error instanceof MirrorHubError) console.log(error.code, error.reason); }

// @ts-expect-error: a frame needs a type
mirror.send({ values: { a: 1 } });
// @ts-expect-error: not a task status
mirror.send({ type: "task", task_id: "x", task_name: "squat", event: "started", status: "done" });
// @ts-expect-error: store is "memory" or "indexeddb"
new MirrorClient({ url: "ws://h", sessionId: "s", store: "disk" });
// @ts-expect-error: send() does not return a promise
await mirror.send(frame).then(() => 0);
// @ts-expect-error: watchers speak protocol 1 or 2
new WatcherClient({ url: "ws://h", sessionId: "s", protocol: 3 });
