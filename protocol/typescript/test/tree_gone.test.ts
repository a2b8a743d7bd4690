/**
 * A call of a client that found its tree, once that tree has ended (PlanSettings.treeGone says
 * so): its unanswered attempt or its dropped connection ends it `not_running`, without a
 * failure counted against the actor's breaker (the next call is told `not_running` too, not
 * `circuit_open`). A new epoch is the tree answering: not asked. The live case, on a tree
 * stopped with `moorage down`, is tests/test_clients_tree_gone.py.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { CallPlan, type Verdict } from "../src/calls.js";
import { type WireError, wireError } from "../src/errors.js";
import { Backoff, CircuitBreaker } from "../src/recovery.js";

const EP = "5eed0f1ce0ffee00";
const ENDED = wireError("not_running", "the moorage tree in /run/x has ended (its instance lock is free)");

function plan(op: string, idempotent: boolean, br: CircuitBreaker, gone: () => WireError | null): CallPlan {
  const settings = { sid: "4242-1f2e3d4c5b6a", timeout: 30, attemptTimeout: 1, backoff: new Backoff(0.01, 2, 0.5, 0), treeGone: gone };
  return new CallPlan(1, "alpha", op, null, idempotent, settings, br, () => undefined, 30, [], 0);
}

function nameOf(v: Verdict): string {
  assert.ok(v.kind === "done" && v.error !== undefined, `not ended: ${JSON.stringify(v)}`);
  return v.error.error.name;
}

test("an unanswered attempt once the tree has ended is not_running, and the breaker is not charged", () => {
  const br = new CircuitBreaker(1, 60);
  for (const [op, idempotent] of [["sys.ping", true], ["fake.effect", false]] as const) {
    const p = plan(op, idempotent, br, () => ENDED);
    assert.equal(p.start(0).kind, "wait");
    assert.equal(nameOf(p.onTimeout(1)), "not_running");
  }
  assert.equal(br.failures, 0);
  assert.equal(br.current(1), "closed");
});

test("a dropped connection once the tree has ended is not_running; a new epoch is not asked", () => {
  const br = new CircuitBreaker(5, 60);
  let asked = 0;
  const gone = (): WireError | null => {
    asked += 1;
    return ENDED;
  };
  const ping = plan("sys.ping", true, br, gone);
  ping.start(0);
  assert.equal(nameOf(ping.onActorGone(0.5, EP, null)), "not_running");
  const effect = plan("fake.effect", false, br, gone);
  effect.start(0);
  assert.equal(nameOf(effect.onActorGone(0.5, EP, "0ddba11ce0ffee00")), "outcome_unknown");
  assert.equal(asked, 1);
});

test("a tree still running changes nothing: resent, then timeout at the deadline", () => {
  const br = new CircuitBreaker(5, 60);
  const p = plan("sys.ping", true, br, () => null);
  p.start(0);
  assert.equal(p.onTimeout(1).kind, "resend");
  assert.equal(p.onActorGone(1.5, EP, null).kind, "resend");
  assert.equal(nameOf(p.onTimeout(30)), "timeout");
});
