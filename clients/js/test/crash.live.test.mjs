// Acceptance: a MirrorClient streams 3,000 frames at 100 Hz while the hub is SIGKILLed twice
// and restarted on the same port (by tests/browser/test_js_client.py, told over CONTROL_PORT).
// end() resolves; no frame is ever sent with a seq the hub had already acked (or accepted)
// according to the latest `welcome`. Storage is checked by the pytest side.
import assert from "node:assert/strict";
import net from "node:net";
import { once } from "node:events";
import { test } from "node:test";
import { MirrorClient } from "../mirror-hub.js";

const { HUB_URL, SESSION_ID, MIRROR_TOKEN, CONTROL_PORT } = process.env;
const FRAMES = Number(process.env.FRAMES ?? 3000);
const KILL_AT = [Math.floor(FRAMES / 3), Math.floor((2 * FRAMES) / 3)];

test("3,000 frames at 100 Hz through two SIGKILLs: end() resolves, nothing acked is resent", { timeout: 120_000 }, async () => {
  const control = net.connect(Number(CONTROL_PORT), "127.0.0.1");
  await once(control, "connect");
  const client = new MirrorClient({ url: HUB_URL, sessionId: SESSION_ID, token: MIRROR_TOKEN, backoffMaxMs: 1000 });
  let welcome = null;
  const welcomes = [];
  const violations = [];
  client.addEventListener("welcome", (e) => { welcome = e.detail; welcomes.push(e.detail); });
  client.addEventListener("close", (e) => console.log(`close ${JSON.stringify(e.detail)} at seq ${client.lastSeq}`));
  client.addEventListener("sent", ({ detail }) => {
    // Everything up to welcome.last_seq is in the hub already (acked_seq <= last_seq).
    if (detail.first <= welcome.last_seq) violations.push({ sent: detail, welcome });
  });
  await client.start();
  const started = Date.now();
  for (let i = 1; i <= FRAMES; i++) {
    const due = started + i * 10; // 100 Hz
    if (due > Date.now()) await new Promise((r) => setTimeout(r, due - Date.now()));
    const seq = client.send({ type: "metrics", values: { accuracy: (i % 100) / 100, stability: 0.7 } });
    assert.equal(seq, i);
    if (KILL_AT.includes(i)) control.write(`kill ${i}\n`);
  }
  const last = await client.end();
  control.end();
  assert.equal(last, FRAMES);
  assert.deepEqual(violations, []);
  assert.ok(client.reconnects >= 2, `reconnects: ${client.reconnects}`);
  console.log(`RESULT ${JSON.stringify({ last, reconnects: client.reconnects, written: client.framesWritten, welcomes: welcomes.map((w) => [w.last_seq, w.acked_seq]) })}`);
});
