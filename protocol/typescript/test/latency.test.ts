/**
 * Latency recording, live: this client's pushes (PROTOCOL.md section 2, "A client's own
 * latency": the histogram encoding written out there) are taken whole by the real metrics
 * actor, which then shows the client's rows beside the service's. Needs the tree of the
 * conformance suite (MOORAGE_CONFORMANCE_DIR); skipped without it.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { inflateSync } from "node:zlib";

import { Pull } from "zeromq";

import { CallPlan } from "../src/calls.js";
import { Client } from "../src/client.js";
import { endpointsOf } from "../src/endpoints.js";
import { KINDS, MoorageError, fromWire, toWire, wireError } from "../src/errors.js";
import { COUNTS_LEN, Recorder, countsIndex, valueAt } from "../src/histogram.js";
import { type Counts, LatencyBook, LatencyPusher, checkMetricsName, splitPush } from "../src/latency.js";
import { MAX_PUSH_BUCKETS } from "../src/limits.js";
import { decode } from "../src/msgpack.js";
import { Backoff, CircuitBreaker } from "../src/recovery.js";

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

/** Counts whose histogram is about as big as the fixed shape allows: every bucket holding a
 * count that neither zigzag nor deflate can shrink (some 14 KiB encoded), each below 2^41 and
 * small enough where the values are big that the summed microseconds stay below 2^53 (the
 * metrics actor refuses a push that would carry them past). */
function fat(seed: number): Counts {
  const times = new Recorder();
  let x = seed;
  for (let i = 0; i < COUNTS_LEN; i++) {
    x = (Math.imul(x, 1_103_515_245) + 12_345) & 0x7fff_ffff;
    const cap = Math.min(2 ** 41, Math.floor(2 ** 52 / (COUNTS_LEN * valueAt(countsIndex(valueAt(i))))));
    const n = ((x * 1024 + i) % cap) + 1;
    times.counts.set(valueAt(i), n);
    times.total += n;
  }
  return { ok: times.total, error: 0, caller: 0, times };
}

test("a metrics name the metrics actor would refuse is refused when the client is made", () => {
  for (const bad of ["", "x".repeat(101), "a\x1b[2Jb", "a\x9bb", "a\x7fb"]) {
    assert.throws(() => checkMetricsName(bad), /1 to 100 printable/, JSON.stringify(bad));
  }
  assert.equal(checkMetricsName("é".repeat(100)), "é".repeat(100));
});

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
  const buckets = bodies.map((b) => b.reduce((sum, o) => sum + o.buckets, 0));
  // 1 MiB and 32,768 non-zero counts: what the metrics actor takes in one push
  // (actors/metrics/push.py); of histograms this full, the non-zero counts bind first.
  assert.ok(bodies.length > 1 && bytes.every((n) => n <= 1 << 20) && buckets.every((n) => n <= 32_768), `${bytes} ${buckets}`);
  // Full: the next op would not have fitted.
  for (let i = 0; i + 1 < bodies.length; i++) assert.ok(buckets[i] + bodies[i + 1][0].buckets > 32_768);
  assert.deepEqual(bodies.flat().map((o) => o.name), groups.map(([name]) => name));

  // Encodings bigger than any of the fixed shape's, of few buckets: the bytes bind first.
  class Big extends Recorder {
    override encode(): Uint8Array {
      return new Uint8Array(400_000);
    }
  }
  const big = splitPush(Array.from({ length: 7 }, (_, i): [string, Counts] => [`a/big.${i}`, { ok: 1, error: 0, caller: 0, times: new Big() }]));
  assert.deepEqual(big.map((b) => b.length), [2, 2, 2, 1]);

  class Huge extends Recorder {
    override encode(): Uint8Array {
      return new Uint8Array((1 << 20) + 1);
    }
  }
  const small = (): Counts => ({ ok: 1, error: 0, caller: 0, times: new Recorder() });
  const alone = splitPush([["a/x", small()], ["a/huge", { ok: 1, error: 0, caller: 0, times: new Huge() }], ["a/y", small()]]);
  assert.deepEqual(alone.map((b) => b.map((o) => o.name)), [["a/x"], ["a/huge"], ["a/y"]]);
  assert.deepEqual(splitPush([]), []);
});

/** The non-zero counts of an encoded histogram, read back from its bytes (base64, the outer
 * header, zlib, the 40-byte payload header, then zigzag LEB128 varints: a negative one is a
 * run of zeros). */
function decodedNonZero(hist: Uint8Array): number {
  const outer = Buffer.from(Buffer.from(hist).toString("latin1"), "base64");
  assert.equal(outer.readUInt32BE(0), 0x1c849314);
  const payload = inflateSync(outer.subarray(8, 8 + outer.readUInt32BE(4)));
  assert.equal(payload.readUInt32BE(0), 0x1c849313);
  const end = 40 + payload.readUInt32BE(4);
  let nonZero = 0;
  for (let at = 40; at < end; ) {
    let z = 0;
    let scale = 1;
    for (;;) {
      const byte = payload[at++];
      z += (byte & 0x7f) * scale;
      scale *= 128;
      if (byte < 0x80) break;
    }
    if (z % 2 === 0 && z > 0) nonZero += 1; // (an even zigzag is a count; odd, a run of zeros)
  }
  return nonZero;
}

/** Latencies spread wide: (128 + k % 128) << floor(k / 128) µs for k in 0..n, n distinct HDR
 * buckets (128 a doubling). */
function wide(k: number): number {
  return (128 + (k % 128)) * 2 ** Math.floor(k / 128);
}

test("an op's non-zero counts are its histogram's buckets that hold a count, not its distinct values", () => {
  const r = new Recorder();
  for (let k = 0; k < 1_500; k++) {
    r.record(wide(k));
    if (k >= 128) r.record(wide(k) + 1); // (the same bucket: from 256 up a bucket spans 2^b values)
  }
  assert.equal(r.counts.size, 1_500 + 1_372);
  assert.equal(r.nonZeroCounts(), 1_500);
  assert.equal(decodedNonZero(r.encode()), 1_500);
  const full = fat(3).times; // (a count at each index's value: the lowest and highest share theirs)
  assert.ok(full.nonZeroCounts() > 3_000 && full.nonZeroCounts() < full.counts.size, `${full.nonZeroCounts()}`);
  assert.equal(decodedNonZero(full.encode()), full.nonZeroCounts());
  assert.equal(new Recorder().nonZeroCounts(), 0);
});

test("a push's histograms are cut at 32,768 non-zero counts a body", () => {
  // 40 ops of 1,500 buckets each: 60,000 non-zero counts, in some 150 KiB (within 1 MiB)
  const book = new LatencyBook(true);
  for (let i = 0; i < 40; i++) for (let k = 0; k < 1_500; k++) book.record("alpha", `op.${i}`, wide(k), true);
  const bodies = splitPush(book.take());
  // 32,768: what the metrics actor takes in one push (actors/metrics/push.py)
  assert.equal(MAX_PUSH_BUCKETS, 32_768);
  const buckets = bodies.map((b) => b.reduce((sum, o) => sum + decodedNonZero(o.hist), 0));
  assert.ok(bodies.length > 1 && buckets.every((n) => n <= 32_768), `${buckets}`);
  assert.deepEqual(bodies.map((b) => b.length), [21, 19]); // full: 22 ops would be 33,000
  const flat = bodies.flat();
  assert.deepEqual(flat.map((o) => o.name), Array.from({ length: 40 }, (_, i) => `alpha/op.${i}`));
  for (const o of flat) {
    assert.deepEqual([o.counts.ok, o.counts.error, o.counts.times.total, o.buckets], [1_500, 0, 1_500, 1_500]);
    assert.equal(decodedNonZero(o.hist), o.buckets);
  }

  class Wider extends Recorder {
    override nonZeroCounts(): number {
      return 32_769;
    }
  }
  const small = (): Counts => ({ ok: 1, error: 0, caller: 0, times: new Recorder() });
  const alone = splitPush([["a/x", small()], ["a/wide", { ok: 1, error: 0, caller: 0, times: new Wider() }], ["a/y", small()]]);
  assert.deepEqual(alone.map((b) => b.map((o) => o.name)), [["a/x"], ["a/wide"], ["a/y"]]);
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

test("histograms of 60,000 non-zero counts in one interval reach the metrics actor, cut into bodies it takes", { skip: DIR === undefined ? "no tree" : false, timeout: 60_000 }, async () => {
  const name = `ts-${randomBytes(3).toString("hex")}`;
  const book = new LatencyBook(true);
  for (let i = 0; i < 40; i++) for (let k = 0; k < 1_500; k++) book.record("wide", `op.${i}`, wide(k), true);
  const pusher = new LatencyPusher(book, endpointsOf(DIR!).metricsIn(), name, `${process.pid}-wide`, 3600);
  const c = new Client({ runtimeDir: DIR, timeout: 10 });
  try {
    const sent = await pusher.pushNow();
    const want = new Map(Array.from({ length: 40 }, (_, i) => [`wide/op.${i}`, 1_500]));
    const end = Date.now() + 20_000;
    for (;;) {
      const q = (await c.call("metrics", "metrics.query", { actor: `client.${name}` })) as { ops: { op: string; lifetime: { ok: number; count: number } }[] };
      if (q.ops.length < want.size && Date.now() < end) continue;
      assert.deepEqual(new Map(q.ops.map((r) => [r.op, r.lifetime.ok])), want);
      assert.deepEqual(new Map(q.ops.map((r) => [r.op, r.lifetime.count])), want);
      assert.equal(sent, 2);
      break;
    }
  } finally {
    await pusher.close();
    await c.close();
  }
});

test("histograms past 1 MiB in one interval reach the metrics actor, cut into bodies it takes", { skip: DIR === undefined ? "no tree" : false, timeout: 60_000 }, async () => {
  const name = `ts-${randomBytes(3).toString("hex")}`;
  const book = new LatencyBook(true);
  const groups: [string, Counts][] = Array.from({ length: 100 }, (_, i) => [`fat/op.${i}`, fat(i + 1)]);
  for (const [op, counts] of groups) book.putBack(op, counts); // (pending, as if recorded)
  assert.ok(groups.reduce((sum, [, counts]) => sum + counts.times.encode().length, 0) > 1 << 20);
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

/** A call of watcher's fs.stat ended with `error` (or an ok reply), recorded into `book` as the
 * client records it. */
function endCall(book: LatencyBook, error?: Parameters<CallPlan["done"]>[2]): void {
  const settings = { sid: "4242-1f2e3d4c5b6a", timeout: 30, attemptTimeout: 1, backoff: new Backoff(0.01, 2, 0.5, 0) };
  const p = new CallPlan(1, "watcher", "fs.stat", { path: "/x" }, true, settings, new CircuitBreaker(),
    (micros, ok, caller) => book.record("watcher", "fs.stat", micros, ok, caller), 30, [], 0);
  p.done(0.001, error === undefined ? { id: 1, ok: true, epoch: "e", body: {}, attachments: [] } : undefined, error);
}

function taken(book: LatencyBook): [number, number, number] {
  const [[name, c]] = book.take();
  assert.equal(name, "watcher/fs.stat");
  return [c.ok, c.error, c.caller];
}

test("a call's error counts as the caller's exactly when the error table's fault says so (section 6)", () => {
  const book = new LatencyBook(true);
  for (const [name, kind] of KINDS) {
    const want = [0, 1, kind.fault === "caller" ? 1 : 0];
    endCall(book, wireError(name));
    assert.deepEqual(taken(book), want, name);
    // (as an error reply read from the wire, and as the client's own error)
    endCall(book, fromWire(toWire(wireError(name))));
    assert.deepEqual(taken(book), want, name);
    endCall(book, new MoorageError(wireError(name), "watcher", "fs.stat"));
    assert.deepEqual(taken(book), want, name);
  }
  // A code this client does not know (a newer actor's) counts as the service's.
  endCall(book, fromWire({ code: 450, name: "quota_exceeded", category: "x", severity: "critical", retryable: false, fallback_available: false, message: "m" }));
  assert.deepEqual(taken(book), [0, 1, 0]);
  endCall(book);
  assert.deepEqual(taken(book), [1, 0, 0]);
});

test("a push carries `caller` for an op some of whose errors were the caller's, and only then", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mlat-"));
  const pull = new Pull();
  const endpoint = `ipc://${join(dir, "metrics.in")}`;
  await pull.bind(endpoint);
  const book = new LatencyBook(true);
  const pusher = new LatencyPusher(book, endpoint, "editor", "4242-s", 3600);
  try {
    for (let i = 0; i < 40; i++) book.record("watcher", "fs.stat", 80, false, true);
    book.record("watcher", "fs.stat", 90, false); // e.g. a timeout: the service's
    book.record("watcher", "fs.stat", 70, true);
    book.record("parser", "sys.ping", 70, true);
    book.record("parser", "parse.feed", 70, true, true); // (an ok call is only ok)
    assert.equal(await pusher.pushNow(), 1);
    const [, , body] = await pull.receive();
    const ops = decode(body) as Record<string, Record<string, unknown>>;
    assert.deepEqual([ops["watcher/fs.stat"].ok, ops["watcher/fs.stat"].error, ops["watcher/fs.stat"].caller], [1, 41, 40]);
    for (const op of ["parser/sys.ping", "parser/parse.feed"]) {
      assert.ok(!("caller" in ops[op]), op); // absent = 0, as an actor pushes it
    }
    // A push that could not leave keeps its caller count for the next one.
    book.record("watcher", "fs.stat", 80, false, true);
    const [[name, counts]] = book.take();
    book.putBack(name, counts);
    book.record("watcher", "fs.stat", 80, false, true);
    assert.deepEqual(book.take().map(([n, c]) => [n, c.error, c.caller]), [["watcher/fs.stat", 2, 2]]);
  } finally {
    await pusher.close();
    pull.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an editor's fs.stat of missing files counts as the caller's at the metrics actor and raises no failure_rate alert", { skip: DIR === undefined ? "no tree" : false, timeout: 60_000 }, async () => {
  const name = `ts-probe-${randomBytes(3).toString("hex")}`;
  const c = new Client({ runtimeDir: DIR, timeout: 10, metricsName: name, metricsInterval: 3600 });
  try {
    // 25: past the alert's 20 requests (the tree's alert_min_samples), every one failed
    for (let i = 0; i < 25; i++) {
      await assert.rejects(c.call("watcher", "fs.stat", { path: join(DIR!, `${name}-${i}`, ".editorconfig") }),
        (e: unknown) => e instanceof MoorageError && e.errorName === "not_found");
    }
    assert.ok((await c.pushLatency()) >= 1);
    const end = Date.now() + 20_000;
    for (;;) {
      const q = (await c.call("metrics", "metrics.query", { actor: `client.${name}` })) as { ops: { op: string; lifetime: { error: number; caller_errors: number } }[] };
      const row = q.ops.find((r) => r.op === "watcher/fs.stat");
      if (row === undefined && Date.now() < end) continue;
      assert.deepEqual([row?.lifetime.error, row?.lifetime.caller_errors], [25, 25]);
      break;
    }
    // (the push is merged, and its alerts evaluated, before the query that showed it)
    const alerts = (await c.call("metrics", "metrics.alerts")) as { recent: { kind: string; state: string; actor: string; op: string }[] };
    const mine = alerts.recent.filter((e) => e.actor === `client.${name}` && e.op === "watcher/fs.stat");
    assert.deepEqual(mine, []);
  } finally {
    await c.close();
  }
});
