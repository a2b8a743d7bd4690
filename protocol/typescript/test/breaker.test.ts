/**
 * The breaker (PROTOCOL.md section 11): a probe whose connection dropped under it gives its
 * place back, so its resend to the successor is let through instead of failing `circuit_open`
 * until the probe's lease runs out. `circuit_open` means "not sent": only a call refused before
 * its first send ends with it, with a `retry_after_ms` above 0 (the cooldown left; while
 * half-open, the breaker's current cooldown); a call that was sent and whose resend the breaker
 * refuses ends with its own outcome. Each attempt with no reply is one failure.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { CallPlan, type Verdict } from "../src/calls.js";
import { toWire, wireError, type MoorageError } from "../src/errors.js";
import { MAX_MESSAGE_SIZE } from "../src/limits.js";
import { Backoff, CircuitBreaker } from "../src/recovery.js";

test("a probe whose connection dropped gives its place back to its resend", () => {
  const br = new CircuitBreaker(1, 1.0, 10, 1, 30);
  br.recordFailure(0);
  assert.ok(br.allow(1.0)); // the probe goes out; the actor dies under it
  assert.ok(!br.allow(1.005)); // one probe at a time
  br.giveBack();
  assert.ok(br.allow(1.01)); // its resend is the probe now
  assert.ok(!br.allow(1.02));
  br.recordSuccess();
  assert.equal(br.current(1.1), "closed");
});

function plan(id: number, op: string, idempotent: boolean, br: CircuitBreaker, resumable = false): CallPlan {
  const settings = { sid: "4242-1f2e3d4c5b6a", timeout: 30, attemptTimeout: 1, backoff: new Backoff(0.01, 2, 0.5, 0) };
  const p = new CallPlan(id, "alpha", op, null, idempotent, settings, br, () => undefined, 30, [], 0);
  p.resumable = resumable;
  return p;
}

function errorOf(v: Verdict): MoorageError {
  assert.equal(v.kind, "done");
  assert.ok(v.kind === "done" && v.error !== undefined, "no error");
  return v.error;
}

test("a call whose resend the breaker refuses ends timeout when its attempts got no reply, not circuit_open", () => {
  const br = new CircuitBreaker(2, 60);
  const p = plan(1, "fake.read", true, br);
  assert.equal(p.start(0).kind, "wait");
  assert.equal(p.onTimeout(1).kind, "resend"); // one failure
  assert.equal(p.resend(1.01).kind, "wait"); // still closed: sent again
  assert.equal(p.onTimeout(3.01).kind, "resend"); // two: open
  assert.equal(br.current(3.01), "open");
  const e = errorOf(p.resend(3.02));
  assert.deepEqual([e.error.name, e.attempts], ["timeout", 2]);
  assert.equal(e.error.retry_after_ms, undefined);
});

test("a refused resend ends with the last attempt's outcome: its error reply, or no reply", () => {
  const br = new CircuitBreaker(1, 60);
  const busy = plan(1, "fake.read", true, br);
  busy.start(0);
  const refusal = { id: 1, ok: false, epoch: "5eed0f1ce0ffee00", body: toWire(wireError("busy", "later", { retry_after_ms: 50 })) as never, attachments: [] };
  assert.equal(busy.onReply(refusal, 0.01).kind, "resend");
  br.recordFailure(0.02); // another call's timeout opens it
  let e = errorOf(busy.resend(0.07));
  assert.deepEqual([e.error.name, e.error.retry_after_ms], ["busy", 50]);

  const br2 = new CircuitBreaker(1, 60);
  const dropped = plan(2, "fake.read", true, br2);
  const resumable = plan(3, "term.exec", false, br2, true);
  dropped.start(0);
  resumable.start(0);
  br2.recordFailure(0.1);
  const names = [dropped, resumable].map((p) => {
    assert.equal(p.onActorGone(0.2, "5eed0f1ce0ffee00", null).kind, "resend");
    const err = errorOf(p.resend(0.2));
    return [err.error.name, err.attempts];
  });
  assert.deepEqual(names, [["timeout", 1], ["outcome_unknown", 1]]);
});

test("a call refused before its send is circuit_open with the cooldown left; while half-open, with the current cooldown, never 0", () => {
  const br = new CircuitBreaker(1, 0.5);
  br.recordFailure(0); // open until 0.5
  let e = errorOf(plan(1, "fake.read", true, br).start(0.2));
  assert.deepEqual([e.error.name, e.error.retry_after_ms, e.attempts], ["circuit_open", 300, 0]);
  const probe = plan(2, "fake.read", true, br);
  assert.equal(probe.start(0.6).kind, "wait"); // half-open: the probe goes out
  e = errorOf(plan(3, "fake.read", true, br).start(0.7));
  assert.deepEqual([e.error.name, e.error.retry_after_ms], ["circuit_open", 500]);
  // The probe fails: open again, its cooldown doubled; half-open again after it, 1000.
  assert.equal(probe.onTimeout(1.6).kind, "resend");
  assert.equal(br.current(1.6), "open");
  assert.equal(plan(4, "fake.read", true, br).start(2.7).kind, "wait");
  e = errorOf(plan(5, "fake.read", true, br).start(2.8));
  assert.deepEqual([e.error.name, e.error.retry_after_ms], ["circuit_open", 1000]);
});

test("a frame over what an actor takes is refused before it is sent, message_too_large, not outcome_unknown", () => {
  const br = new CircuitBreaker(5, 60);
  const settings = { sid: "4242-1f2e3d4c5b6a", timeout: 30, attemptTimeout: 1, backoff: new Backoff(0.01, 2, 0.5, 0) };
  const p = new CallPlan(1, "alpha", "fake.effect", null, false, settings, br, () => undefined, 30,
    [new Uint8Array(MAX_MESSAGE_SIZE + 1)], 0);
  const e = errorOf(p.start(0));
  assert.deepEqual([e.error.name, e.attempts], ["message_too_large", 0]);
  assert.ok(e.error.message.includes(String(MAX_MESSAGE_SIZE + 1)), e.error.message);
  assert.equal(br.current(0), "closed");
});
