/**
 * Latency recording, live: this client's pushes (PROTOCOL.md section 2, "A client's own
 * latency": the histogram encoding written out there) are taken whole by the real metrics
 * actor, which then shows the client's rows beside the service's. Needs the tree of the
 * conformance suite (MOORAGE_CONFORMANCE_DIR); skipped without it.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";

import { Client } from "../src/client.js";
import { Recorder, countsIndex, valueAt } from "../src/histogram.js";

const DIR = process.env.MOORAGE_CONFORMANCE_DIR;

test("a value's bucket stands for the values of its index (section 2's index(v))", () => {
  for (const v of [1, 2, 127, 255, 256, 257, 1000, 65_535, 1_000_000, 3_600_000_000]) {
    const i = countsIndex(v);
    assert.ok(valueAt(i) >= v && (i === 0 || valueAt(i - 1) < v), `v=${v}`);
  }
  const r = new Recorder();
  for (let i = 1; i <= 100; i++) r.record(i * 10);
  assert.deepEqual([r.summary().p50, r.summary().max], [501, 1003]); // HDR highest-equivalent values, as Python's hdrh reports them
});

test("a pushing client shows up in the metrics actor beside the service", { skip: DIR === undefined ? "no tree" : false, timeout: 60_000 }, async () => {
  const name = `ts-${randomBytes(3).toString("hex")}`;
  const c = new Client({ runtimeDir: DIR, timeout: 10, metricsName: name });
  try {
    for (let i = 0; i < 25; i++) await c.call("parser", "sys.ping");
    await assert.rejects(c.call("parser", "parse.no_such_op"));
    assert.ok((await c.pushLatency()) >= 1);
    for (;;) {
      const q = (await c.call("metrics", "metrics.query", { actor: `client.${name}` })) as { ops: { op: string; lifetime: { ok: number; error: number; p50: number } }[] };
      const ping = q.ops.find((r) => r.op === "parser/sys.ping");
      const bad = q.ops.find((r) => r.op === "parser/parse.no_such_op");
      if (ping && bad) {
        assert.equal(ping.lifetime.ok, 25);
        assert.equal(bad.lifetime.error, 1);
        const mine = c.latencyReport().find((r) => r.op === "sys.ping")!;
        // Merged from our encoding: the same bucket as our own summary says.
        assert.equal(ping.lifetime.p50, mine.p50);
        break;
      }
    }
  } finally {
    await c.close();
  }
});
