/**
 * Deadlines, live (PROTOCOL.md sections 9-10): a call with no reply in time ends at its
 * deadline, `outcome_unknown` when it may have run, `timeout` when it was idempotent and its
 * resends got no answer either. Needs the conformance suite's tree; skipped without it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/client.js";
import { MoorageError } from "../src/errors.js";

const DIR = process.env.MOORAGE_CONFORMANCE_DIR;
const skip = DIR === undefined ? "no tree" : false;

test("a call with no reply by its deadline ends then, outcome_unknown", { skip, timeout: 30_000 }, async () => {
  const c = new Client({ runtimeDir: DIR, timeout: 10 });
  try {
    const t0 = performance.now();
    await assert.rejects(c.call("conf", "fake.slow", { ms: 3000 }, { timeout: 0.3 }), (e: unknown) => {
      assert.ok(e instanceof MoorageError);
      assert.equal(e.error.name, "outcome_unknown");
      return true;
    });
    const took = (performance.now() - t0) / 1000;
    assert.ok(took >= 0.29 && took < 2, `ended after ${took} s`);
  } finally {
    await c.close();
  }
});

test("an idempotent call is resent with the same id and ends timeout", { skip, timeout: 30_000 }, async () => {
  const c = new Client({ runtimeDir: DIR, timeout: 10, attemptTimeout: 0.1 });
  try {
    await assert.rejects(c.call("conf", "fake.slow", { ms: 3000 }, { timeout: 0.5, idempotent: true }), (e: unknown) => {
      assert.ok(e instanceof MoorageError);
      assert.equal(e.error.name, "timeout");
      assert.ok(e.attempts >= 2, `attempts ${e.attempts}`);
      return true;
    });
  } finally {
    await c.close();
  }
});

test("a call given no timeout waits for its op's declared timeout, not the client's", { skip, timeout: 30_000 }, async () => {
  const c = new Client({ runtimeDir: DIR, timeout: 1 }); // fake.slow declares the runtime's 5 s
  try {
    assert.deepEqual(await c.call("conf", "fake.slow", { ms: 1500 }), { slept_ms: 1500 });
  } finally {
    await c.close();
  }
});
