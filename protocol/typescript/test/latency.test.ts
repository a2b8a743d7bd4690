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
import { endpointsOf } from "../src/endpoints.js";
import { COUNTS_LEN, Recorder, countsIndex, valueAt } from "../src/histogram.js";
import { type Counts, LatencyBook, LatencyPusher, splitPush } from "../src/latency.js";

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

/** Counts whose histogram is as big as the fixed shape allows: every bucket holding a count
 * that neither zigzag nor deflate can shrink (some 24 KiB encoded). */
function fat(seed: number): Counts {
  const times = new Recorder();
  let x = seed;
  for (let i = 0; i < COUNTS_LEN; i++) {
    x = (Math.imul(x, 1_103_515_245) + 12_345) & 0x7fff_ffff;
    const n = x * 1024 + i + 1; // < 2^41, so the total stays far below 2^53
    times.counts.set(valueAt(i), n);
    times.total += n;
  }
  return { ok: times.total, error: 0, times };
}

test("a push of 300 ops goes as bodies the metrics actor takes, each op once, in order", () => {
  const book = new LatencyBook(true);
  for (let i = 0; i < 300; i++) for (let k = 0; k <= i % 3; k++) book.record("parser", `op.${i}`, 100 + i, k !== 1);
  const bodies = splitPush(book.take());
  // 256: what the metrics actor takes in one push (actors/metrics/push.py)
  assert.deepEqual(bodies.map((b) => b.length), [256, 44]);
  const flat = bodies.flat();
  assert.deepEqual(flat.map((o) => o.name), Array.from({ length: 300 }, (_, i) => `parser/op.${i}`));
  for (const [i, o] of flat.entries()) {
    const [ok, error] = [[1, 0], [1, 1], [2, 1]][i % 3];
    assert.deepEqual([o.counts.ok, o.counts.error, o.counts.times.total], [ok, error, ok + error]);
    assert.deepEqual(o.hist, o.counts.times.encode());
  }
});

test("a push's histograms are cut at 1 MiB a body, and one bigger alone still goes alone", () => {
  const groups: [string, Counts][] = Array.from({ length: 100 }, (_, i) => [`parser/op.${i}`, fat(i + 1)]);
  const bodies = splitPush(groups);
  const bytes = bodies.map((b) => b.reduce((sum, o) => sum + o.hist.length, 0));
  // 1 MiB: what the metrics actor takes in one push (actors/metrics/push.py)
  assert.ok(bodies.length > 1 && bytes.every((n) => n <= 1 << 20), `${bytes}`);
  // Full: the next op would not have fitted.
  for (let i = 0; i + 1 < bodies.length; i++) assert.ok(bytes[i] + bodies[i + 1][0].hist.length > 1 << 20);
  assert.deepEqual(bodies.flat().map((o) => o.name), groups.map(([name]) => name));

  class Huge extends Recorder {
    override encode(): Uint8Array {
      return new Uint8Array((1 << 20) + 1);
    }
  }
  const small = (): Counts => ({ ok: 1, error: 0, times: new Recorder() });
  const alone = splitPush([["a/x", small()], ["a/huge", { ok: 1, error: 0, times: new Huge() }], ["a/y", small()]]);
  assert.deepEqual(alone.map((b) => b.map((o) => o.name)), [["a/x"], ["a/huge"], ["a/y"]]);
  assert.deepEqual(splitPush([]), []);
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

test("a client that called 300 distinct ops has all 300 in the metrics actor", { skip: DIR === undefined ? "no tree" : false, timeout: 60_000 }, async () => {
  const name = `ts-${randomBytes(3).toString("hex")}`;
  // (an interval longer than the test: only the push below sends)
  const c = new Client({ runtimeDir: DIR, timeout: 10, metricsName: name, metricsInterval: 3600 });
  try {
    // No such ops: each call is answered (an error) and timed all the same.
    for (let i = 0; i < 300; i++) await assert.rejects(c.call("parser", `parse.no_such_op_${i}`));
    const sent = await c.pushLatency();
    const end = Date.now() + 20_000;
    for (;;) {
      const q = (await c.call("metrics", "metrics.query", { actor: `client.${name}` })) as { ops: { op: string; lifetime: { error: number } }[] };
      // (beside them: the sys.hello that learnt parser's ops, and these queries)
      const rows = new Map(q.ops.filter((r) => r.op.startsWith("parser/parse.")).map((r) => [r.op, r.lifetime.error]));
      if (rows.size < 300 && Date.now() < end) continue;
      assert.deepEqual(rows, new Map(Array.from({ length: 300 }, (_, i) => [`parser/parse.no_such_op_${i}`, 1])));
      assert.equal(sent, 2);
      break;
    }
  } finally {
    await c.close();
  }
});

test("histograms past 1 MiB in one interval reach the metrics actor, cut into bodies it takes", { skip: DIR === undefined ? "no tree" : false, timeout: 60_000 }, async () => {
  const name = `ts-${randomBytes(3).toString("hex")}`;
  const book = new LatencyBook(true);
  const groups: [string, Counts][] = Array.from({ length: 100 }, (_, i) => [`fat/op.${i}`, fat(i + 1)]);
  for (const [op, counts] of groups) book.putBack(op, counts); // (pending, as if recorded)
  const pusher = new LatencyPusher(book, endpointsOf(DIR!).metricsIn(), name, `${process.pid}-fat`, 3600);
  const c = new Client({ runtimeDir: DIR, timeout: 10 });
  try {
    const sent = await pusher.pushNow();
    const end = Date.now() + 20_000;
    for (;;) {
      const q = (await c.call("metrics", "metrics.query", { actor: `client.${name}` })) as { ops: { op: string; lifetime: { ok: number } }[] };
      if (q.ops.length < groups.length && Date.now() < end) continue;
      const got = new Map(q.ops.map((r) => [r.op, r.lifetime.ok]));
      for (const [op, counts] of groups) assert.equal(got.get(op), counts.ok, op);
      assert.ok(sent > 1, `${sent}`);
      break;
    }
  } finally {
    await pusher.close();
    await c.close();
  }
});
