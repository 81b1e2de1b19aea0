// Streams one session with the browser/Node client module (clients/js/mirror-hub.js):
// a raise_hand task with metrics at --rate frames/s for --seconds, then `end`.
//
//   node client_examples/mirror_client.mjs --url http://127.0.0.1:8000 --token $TOKEN
//   node client_examples/mirror_client.mjs --session 4f6c… --token $MIRROR_TOKEN
//
// Without --session it creates a session with a staff --token and streams with the session's
// mirror_token. Node 20 needs --experimental-websocket (Node 22 has WebSocket built in).
import { parseArgs } from "node:util";
import { randomUUID } from "node:crypto";
import { MirrorClient } from "../clients/js/mirror-hub.js";

const { values: args } = parseArgs({
  options: {
    url: { type: "string", default: "http://127.0.0.1:8000" },
    session: { type: "string" },
    token: { type: "string" },
    rate: { type: "string", default: "30" },
    seconds: { type: "string", default: "10" },
  },
});

let sessionId = args.session;
let token = args.token;
if (!sessionId) {
  const response = await fetch(`${args.url.replace(/^ws/, "http")}/sessions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ child_name: "Node demo", child_age: 7 }),
  });
  if (!response.ok) {
    console.error(`POST /sessions: HTTP ${response.status} ${await response.text()}`);
    process.exit(1);
  }
  const created = await response.json();
  sessionId = created.id;
  token = created.mirror_token;
  console.log(`session ${sessionId}`);
}

const client = new MirrorClient({ url: args.url, sessionId, token });
client.addEventListener("state", (e) => console.log(`state ${e.detail.state}`));
client.addEventListener("error", (e) => console.error(`error: ${e.detail.message}`));
await client.start();

const rate = Number(args.rate);
const frames = Math.round(rate * Number(args.seconds));
const taskId = randomUUID();
const started = Date.now();
client.send({ type: "task", task_id: taskId, task_name: "raise_hand", event: "started", status: "in_progress" });
for (let i = 0; i < frames; i++) {
  const due = started + (i * 1000) / rate;
  if (due > Date.now()) await new Promise((resolve) => setTimeout(resolve, due - Date.now()));
  const frame = { type: "metrics", task_id: taskId, values: { accuracy: 0.8 + 0.1 * Math.sin(i / 20) } };
  while (client.send(frame) === false) await new Promise((resolve) => client.addEventListener("drain", resolve, { once: true }));
}
client.send({ type: "task", task_id: taskId, task_name: "raise_hand", event: "finished", status: "success", duration_seconds: Number(args.seconds) });
try {
  const last = await client.end();
  console.log(`ended at seq ${last}: written ${client.framesWritten}, ${client.reconnects} reconnects`);
} catch (error) {
  console.error(`failed: ${error.message}; acked ${client.ackedSeq} of ${client.lastSeq}`);
  process.exit(1);
}
