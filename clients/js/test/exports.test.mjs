// The declarations name exactly what the module exports, and the copy the hub serves is this file.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as module from "../mirror-hub.js";

const here = new URL("..", import.meta.url);

test("mirror-hub.d.ts declares every export of mirror-hub.js and nothing else", () => {
  const dts = readFileSync(new URL("mirror-hub.d.ts", here), "utf8");
  const values = [...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(values.sort(), Object.keys(module).sort());
});

test("the hub serves the same bytes (hub/static/client is a copy of clients/js)", () => {
  for (const name of ["mirror-hub.js", "mirror-hub.d.ts"]) {
    const served = readFileSync(new URL(`../../hub/static/client/${name}`, here));
    const source = readFileSync(new URL(name, here));
    assert.ok(served.equals(source), `hub/static/client/${name} differs from clients/js/${name}: cp clients/js/${name} hub/static/client/`);
  }
});
