// After a reconnect the client resends only what the hub has not accepted: frames the hub
// accepted but has not committed yet (welcome.acked_seq < seq <= welcome.last_seq) are waited
// for, not sent again. tests/browser/test_js_client.py runs this against a hub that commits slowly
// (HUB_FLUSH_INTERVAL_MS), so a reconnect lands while frames are still uncommitted.
import assert from "node:assert/strict";
import { once } from "node:events";
import { test } from "node:test";
import { MirrorClient } from "../mirror-hub.js";

const { HUB_URL, SESSION_ID, MIRROR_TOKEN } = process.env;

test("a reconnect resends after welcome.last_seq, never what the hub already holds", async () => {
  const sockets = [];
  class Kept extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  const client = new MirrorClient({ url: HUB_URL, sessionId: SESSION_ID, token: MIRROR_TOKEN, WebSocket: Kept });
  const welcomes = [];
  const resent = [];
  client.addEventListener("welcome", (e) => welcomes.push(e.detail));
  client.addEventListener("sent", (e) => {
    if (welcomes.length === 2) resent.push(e.detail);
  });
  await client.start();
  await once(client, "welcome");
  for (let i = 1; i <= 100; i++) client.send({ type: "metrics", values: { accuracy: i / 100 } });
  while (client.framesWritten < 100) await once(client, "sent");
  assert.equal(client.ackedSeq, 0, "the hub committed before the drop; the test proves nothing");
  sockets.at(-1).close(3001, "test drops the connection"); // any code outside the table: reconnect
  await once(client, "welcome");
  const { last_seq: hubSeq, acked_seq: hubAcked } = welcomes[1];
  assert.ok(hubSeq > hubAcked, `welcome ${hubSeq}/${hubAcked}: nothing was uncommitted`);
  for (let i = 101; i <= 110; i++) client.send({ type: "metrics", values: { accuracy: i / 1000 } });
  assert.equal(await client.end(), 110);
  assert.ok(resent.length > 0);
  for (const sent of resent) assert.ok(sent.first > hubSeq, `resent ${sent.first}..${sent.last} after welcome.last_seq ${hubSeq}`);
});
