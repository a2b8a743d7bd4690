/**
 * A client knows which ops are idempotent before any actor has told it: those the schema
 * declares (knownOps.ts, generated from protocol/schema/ops.json), so that a read-only call
 * to an actor that cannot answer its sys.info now (stopped, restarting) is resent and ends
 * `timeout`, never `outcome_unknown`. Once the actor's sys.info is learned, its own table
 * replaces the schema's for that actor (section 10). Against fake actors in this process: a
 * ROUTER at the actor's ipc endpoint that takes requests and answers as the test says.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { knownIdempotent } from "../src/calls.js";
import { Client } from "../src/client.js";
import { encodeReply } from "../src/envelope.js";
import { MoorageError } from "../src/errors.js";
import { SCHEMA_IDEMPOTENT } from "../src/knownOps.js";
import { FakeActor, scratch, settled, within } from "./fake_actor.js";

const A = "aaaaaaaaaaaaaaaa";

function errorName(e: unknown): string {
  assert.ok(e instanceof MoorageError, String(e));
  return e.error.name;
}

test("a read-only call to an actor that cannot answer its sys.info ends timeout, one that may have run outcome_unknown", { timeout: 20_000 }, async () => {
  const dir = scratch();
  const watcher = await FakeActor.bind(dir, "watcher");
  watcher.serve(() => null); // it takes every request and answers none, as a stopped process
  const c = new Client({ runtimeDir: dir, timeout: 1 });
  try {
    const stat = await within(settled(c.call("watcher", "fs.stat", { path: "/tmp" })), 10, "fs.stat");
    assert.equal(errorName(stat), "timeout");
    const write = await within(settled(c.call("watcher", "fs.write", { path: "/tmp/x", data: "" })), 10, "fs.write");
    assert.equal(errorName(write), "outcome_unknown");
    assert.ok(watcher.requests.some((r) => r.op === "sys.info"), "the client asked its sys.info first");
  } finally {
    await c.close();
    watcher.close();
  }
});

test("once the actor's sys.info is learned its table replaces the schema's for that actor", { timeout: 20_000 }, async () => {
  const dir = scratch();
  const watcher = await FakeActor.bind(dir, "watcher");
  // An actor that says fs.stat may not be repeated, and then answers nothing else.
  const ops = { "fs.stat": { idempotent: false, resumable: false, timeout_ms: 1000 } };
  watcher.serve((req) => (req.op === "sys.info" ? encodeReply(req.id, A, { ops }) : null));
  const c = new Client({ runtimeDir: dir, timeout: 1 });
  try {
    assert.equal([...await c.learnOps("watcher")].length, 0);
    const stat = await within(settled(c.call("watcher", "fs.stat", { path: "/tmp" })), 10, "fs.stat");
    assert.equal(errorName(stat), "outcome_unknown");
  } finally {
    await c.close();
    watcher.close();
  }
});

test("what is known idempotent: built-ins, configured, then the actor's table once learned, else the schema's", () => {
  const none: ReadonlySet<string> = new Set();
  assert.ok(SCHEMA_IDEMPOTENT.has("fs.stat") && SCHEMA_IDEMPOTENT.has("sys.config"));
  assert.ok(!SCHEMA_IDEMPOTENT.has("fs.write") && !SCHEMA_IDEMPOTENT.has("term.exec"));
  assert.ok(knownIdempotent("fs.stat", undefined, none));
  assert.ok(!knownIdempotent("fs.write", undefined, none));
  assert.ok(!knownIdempotent("fs.stat", new Set(["fs.read"]), none));
  assert.ok(knownIdempotent("sys.info", new Set(), none));
  assert.ok(knownIdempotent("fs.write", new Set(), new Set(["fs.write"])));
});
