/**
 * protocol/vectors/envelope.json (every vector: decoded to its meaning, encoded to its frames
 * byte for byte, invalid ones refused with their error and echoed id) and client.json (the
 * stream and early-failure scenarios, a call's deadline, the refusals resent), against this
 * client's pure parts.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { ActorLink, CallPlan, callTimeout, opsOfInfo } from "../src/calls.js";
import * as env from "../src/envelope.js";
import { BY_CODE, DecodeError, KINDS, fromWire, toWire as errorToWire, type WireError, wireError } from "../src/errors.js";
import { Float64, decode, type Value } from "../src/msgpack.js";
import { Backoff, CircuitBreaker, MATRIX, maxRetriesFor } from "../src/recovery.js";
import { StreamTracker, type StreamEvent } from "../src/streams.js";
import { hex, parseVectorJson, toWire, unhex } from "./json.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
const VECTORS = parseVectorJson(readFileSync(join(ROOT, "protocol/vectors/envelope.json"), "utf8")) as {
  vectors: { name: string; kind: string; valid: boolean; decode_only?: boolean; frames: string[]; meaning: Record<string, unknown>; error?: { name: string; code: number }; id?: number | null }[];
};
const CLIENT = JSON.parse(readFileSync(join(ROOT, "protocol/vectors/client.json"), "utf8"));

/** Decoded values, floats kept as Float64, as the vectors' JSON values. */
function asJson(v: Value): unknown {
  if (v instanceof Uint8Array) return { $bin: hex(v) };
  if (Array.isArray(v)) return v.map(asJson);
  if (v !== null && typeof v === "object" && !(v instanceof Float64)) {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v)) out[k] = asJson((v as Record<string, Value>)[k]);
    return out;
  }
  return v;
}

/** Bodies again with floats wrapped (the envelope decodes bodies with plain numbers). */
function exactBody(frame: Uint8Array): unknown {
  return asJson(decode(frame, { wrapFloats: true }));
}

function meaningOf(kind: string, frames: Uint8Array[]): Record<string, unknown> {
  if (kind === "request") {
    const r = env.decodeRequest(frames);
    const m: Record<string, unknown> = { id: r.id, sid: r.sid, op: r.op, deadline_ms: r.deadlineMs, args: exactBody(frames[2]), attachments: r.attachments.map(hex) };
    if (r.epoch !== null) m.ep = r.epoch; // a pinned resend
    return m;
  }
  if (kind === "reply" || kind === "error_reply") {
    const r = env.decodeReply(frames);
    if (r.ok) return { id: r.id, ok: true, ep: r.epoch, result: exactBody(frames[2]), attachments: r.attachments.map(hex) };
    return { id: r.id, ok: false, ep: r.epoch, error: asJson(errorToWire(fromWire(r.body)) as Value) };
  }
  const s = env.decodeStream(frames);
  const m: Record<string, unknown> = { topic: s.topic, seq: s.seq, ep: s.epoch, body: exactBody(frames[3]), attachments: s.attachments.map(hex) };
  if (s.welcome) m.welcome = true;
  return m;
}

function framesOf(kind: string, m: Record<string, unknown>): Uint8Array[] {
  const atts = ((m.attachments as string[] | undefined) ?? []).map(unhex);
  if (kind === "request") {
    const frames = env.encodeRequest(m.id as number, m.sid as string, m.op as string, toWire(m.args), (m.deadline_ms as number | null) ?? null, atts);
    return typeof m.ep === "string" ? env.pinRequest(frames, m.ep) : frames;
  }
  if (kind === "reply") return env.encodeReply(m.id as number | null, m.ep as string, toWire(m.result), atts);
  if (kind === "error_reply") return env.encodeError(m.id as number | null, m.ep as string, toWire(m.error) as unknown as WireError);
  if (m.welcome) return env.encodeWelcome(m.topic as string, m.seq as number, m.ep as string);
  return env.encodeStream(m.topic as string, m.seq as number, m.ep as string, toWire(m.body), atts);
}

/** Meanings compared as JSON values: Float64 and bigint by value. */
function norm(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (_k, x) => (x instanceof Float64 ? `f:${x.value}` : typeof x === "bigint" ? `i:${x}` : x)));
}

for (const v of VECTORS.vectors) {
  const frames = v.frames.map(unhex);
  if (v.valid) {
    test(`decoding ${v.name} gives its meaning`, () => {
      const m = { ...v.meaning };
      delete m.why;
      assert.deepStrictEqual(norm(meaningOf(v.kind, frames)), norm(m));
    });
    if (!v.decode_only) {
      test(`encoding ${v.name} gives its frames byte for byte`, () => {
        assert.deepStrictEqual(framesOf(v.kind, v.meaning).map(hex), v.frames);
      });
    }
  } else {
    test(`${v.name} is refused with ${v.error!.name}`, () => {
      assert.throws(() => meaningOf(v.kind, frames), (e: unknown) => {
        assert.ok(e instanceof DecodeError, String(e));
        assert.equal(e.error.name, v.error!.name);
        assert.equal(e.error.code, v.error!.code);
        if (v.kind === "request" || v.kind === "reply") assert.equal(e.requestId, v.id ?? null);
        return true;
      });
    });
  }
}

test("integers past 2^53 decode as bigint, exactly", () => {
  const v = VECTORS.vectors.find((x) => x.name === "reply_integers_past_2_53")!;
  const r = env.decodeReply(v.frames.map(unhex));
  const body = r.body as Record<string, Value>;
  assert.equal(body.mtime_ns, 1767225600123456789n);
  assert.equal(body.ino, 18446744073709551615n);
  assert.equal(body.min_int64, -9223372036854775808n);
  assert.equal(body.safe, Number.MAX_SAFE_INTEGER);
  assert.equal(typeof body.unsafe, "bigint");
});

// --- PROTOCOL.md's tables, as this client holds them ------------------------------------------

const PROTOCOL_MD = readFileSync(join(ROOT, "protocol/PROTOCOL.md"), "utf8");

test("every code this client knows is PROTOCOL.md's, row for row", () => {
  const rows = [...PROTOCOL_MD.matchAll(/^\| (\d{3}) \| `(\w+)` \| (\w+) \| (\w+) \| (true|false) \| (true|false) \| (.+) \| (\w+) \|$/gm)];
  const documented = new Map(rows.map(([, code, ...rest]) => [Number(code), rest]));
  for (const k of KINDS.values()) {
    assert.deepStrictEqual(documented.get(k.code), [k.name, k.category, k.severity, String(k.retryable), String(k.fallbackAvailable), k.summary, k.fault], `code ${k.code}`);
  }
  // A code added to the table later is handled by its wire fields (section 16): say so.
  const unknown = [...documented.keys()].filter((c) => !BY_CODE.has(c));
  if (unknown.length) console.log(`# codes this client's table lacks (handled as received): ${unknown.join(", ")}`);
});

test("the recovery matrix is PROTOCOL.md's", () => {
  const rows = [...PROTOCOL_MD.matchAll(/^\| (\w+) \| (critical|recoverable) \| (\w+) \| ([\w-]+) \| (\d+|N\/A) \|$/gm)];
  assert.equal(rows.length, MATRIX.length);
  for (const [, cat, sev, primary, fallback, n] of rows) {
    const row = MATRIX.find(([c, s]) => c === cat && s === sev)!;
    assert.deepStrictEqual(row, [cat, sev, primary, fallback === "-" ? null : fallback, n === "N/A" ? null : Number(n)]);
  }
});

// --- client.json ---------------------------------------------------------------------------

function eventJson(e: StreamEvent): unknown {
  if (e.kind === "loss") return { loss: { topic: e.topic, first: e.first, last: e.last, ep: e.epoch } };
  if (e.kind === "reset") return { reset: { topic: e.topic, old_epoch: e.oldEpoch, new_epoch: e.newEpoch } };
  if (e.kind !== "message") return { [e.kind]: e }; // (terminal output's byte gaps: no vector has one)
  return { message: { topic: e.topic, seq: e.seq, ep: e.epoch, body: e.body, attachments: e.attachments.map(hex) } };
}

for (const sc of CLIENT.streams) {
  test(`stream scenario ${sc.name}`, () => {
    const t = new StreamTracker(sc.subscription.from_seq, sc.subscription.prefixes);
    sc.steps.forEach((step: Record<string, any>, i: number) => {
      let events: StreamEvent[];
      let need: { topic: string; fromSeq: number } | null = null;
      if (step.message) {
        const m = step.message;
        [events, need] = t.onMessage({ topic: m.topic, seq: m.seq, epoch: m.ep, body: m.body, attachments: m.attachments.map(unhex), welcome: m.welcome === true });
      } else if (step.replay_answer) {
        const a = step.replay_answer;
        [events, need] = t.onReplay(a.topic, a.answer, a.attachments.map(unhex));
      } else {
        events = t.onReplayFailed(step.replay_failed.topic);
      }
      const got = { events: events.map(eventJson), replay: need === null ? null : { topic: need.topic, from_seq: need.fromSeq } };
      assert.deepStrictEqual(got, step.expect, `step ${i}`);
    });
  });
}

for (const sc of CLIENT.calls) {
  test(`call scenario ${sc.name}`, () => {
    const link = new ActorLink(sc.actor, sc.recorded_epoch);
    const settings = { sid: "4242-1f2e3d4c5b6a", timeout: 30, attemptTimeout: 30, backoff: new Backoff() };
    const plans = new Map<number, CallPlan>();
    const outcome = new Map<number, unknown>();
    sc.steps.forEach((step: Record<string, any>, i: number) => {
      if (step.send) {
        const s = step.send;
        const p = new CallPlan(s.id, sc.actor, s.op, s.args, s.idempotent, settings, new CircuitBreaker(), () => undefined, undefined);
        p.start(0);
        plans.set(s.id, p);
        link.sent(p);
        return;
      }
      const got = new Map<string, unknown>();
      let changes;
      if (step.disconnect) changes = link.onDisconnect(1);
      else {
        const own = plans.get(step.reply.id)!;
        link.finished(own);
        changes = link.onEpoch(step.reply.ep, 1);
        own.onReply({ id: own.id, ok: true, epoch: step.reply.ep, body: null, attachments: [] }, 1);
        got.set(String(own.id), { outcome: "done" });
      }
      for (const [p, v] of changes) {
        if (v.kind === "resend") {
          link.sent(p);
          got.set(String(p.id), { outcome: "resent" });
        } else if (v.kind === "done") {
          assert.equal(v.error!.error.name, "outcome_unknown");
          got.set(String(p.id), { outcome: "outcome_unknown", detail: v.error!.error.detail });
        }
      }
      for (const [id, want] of Object.entries(step.expect)) {
        if ((want as { outcome: string }).outcome === "waiting") {
          assert.ok(!got.has(id) && link.inFlight.has(Number(id)), `step ${i}: call ${id} should be untouched`);
        } else {
          assert.deepStrictEqual(got.get(id), want, `step ${i}: call ${id}`);
        }
      }
      for (const id of got.keys()) assert.ok(id in step.expect, `step ${i}: call ${id} was touched`);
    });
  });
}

for (const v of CLIENT.deadlines) {
  test(`deadline vector ${v.name}`, () => {
    const declared = v.ops === null ? undefined : opsOfInfo({ ops: v.ops }).timeouts.get(v.op);
    const timeout = v.timeout ?? callTimeout(declared, v.client_timeout);
    assert.ok(Math.abs(timeout - v.expect_s) < 1e-9, `${timeout} s, not ${v.expect_s}`);
  });
}

for (const v of CLIENT.refusals) {
  test(`refusal vector ${v.name}`, () => {
    const settings = { sid: "4242-1f2e3d4c5b6a", timeout: 10, attemptTimeout: 1, backoff: new Backoff() };
    const p = new CallPlan(1, "terminal", v.op, { session: "s1" }, v.idempotent, settings, new CircuitBreaker(), () => undefined, undefined);
    const at = performance.now() / 1000;
    p.start(at);
    const err = wireError(v.error, "refused");
    const verdict = p.onReply({ id: 1, ok: false, epoch: "aaaaaaaaaaaaaaaa", body: errorToWire(err) as Value, attachments: [] }, at);
    const renew = verdict.kind === "resend" && verdict.renew === true;
    const deadlineMs = p.deadlineMs;
    if (renew) p.renew(2);
    assert.deepStrictEqual({ resend: verdict.kind === "resend", new_id: renew, budget: maxRetriesFor(err) }, v.expect);
    if (renew) {
      const sent = env.decodeRequest(p.frames);
      assert.deepStrictEqual([sent.id, sent.deadlineMs], [2, deadlineMs]); // a new id, the same deadline
    }
  });
}
