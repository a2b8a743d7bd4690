/**
 * A call of a client that found its tree, once that tree has ended (PlanSettings.tree says
 * so): its unanswered attempt or its dropped connection ends it `not_running`, without a
 * failure counted against the actor's breaker (the next call is told `not_running` too, not
 * `circuit_open`), unless it is not safe to repeat and was under way before the client saw the
 * tree ended: it may have run there, `outcome_unknown`. Once the tree was seen ended, a new
 * call looks at the lock before it is sent and ends `not_running` unsent while no tree holds
 * the instance. A new epoch is the tree answering: not asked. The live case, on a real tree,
 * is tests/test_clients_tree_gone.py.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { CallPlan, type TreeEnded, type TreeWatch, type Verdict } from "../src/calls.js";
import { Backoff, CircuitBreaker } from "../src/recovery.js";

const EP = "5eed0f1ce0ffee00";
const DIR = "/run/x";

/** A tree as a client watches it: `ended` (null: running) is what a look finds, and the first
 * look that finds it ended sets `goneSince` to `at`; one that finds it running clears it. */
class Watched implements TreeWatch {
  ended: number | null = null;
  since: number | null = null;
  looks = 0;

  gone(): TreeEnded | null {
    this.looks += 1;
    if (this.ended === null) {
      this.since = null;
      return null;
    }
    this.since ??= this.ended;
    return { since: this.since, dir: DIR };
  }

  goneSince(): number | null {
    return this.since;
  }
}

function plan(op: string, idempotent: boolean, br: CircuitBreaker, tree: TreeWatch | undefined, started = 0): CallPlan {
  const settings = { sid: "4242-1f2e3d4c5b6a", timeout: 30, attemptTimeout: 1, backoff: new Backoff(0.01, 2, 0.5, 0), tree };
  return new CallPlan(1, "alpha", op, null, idempotent, settings, br, () => undefined, 30, [], started);
}

function errorOf(v: Verdict): { name: string; message: string; detail?: unknown } {
  assert.ok(v.kind === "done" && v.error !== undefined, `not ended: ${JSON.stringify(v)}`);
  return v.error.error;
}

const nameOf = (v: Verdict): string => errorOf(v).name;

test("an unanswered attempt once the tree has ended is not_running for a call safe to repeat, and the breaker is not charged", () => {
  const br = new CircuitBreaker(1, 60);
  const tree = new Watched();
  tree.ended = 0.5;
  const ping = plan("sys.ping", true, br, tree);
  assert.equal(ping.start(0).kind, "wait");
  const e = errorOf(ping.onTimeout(1, EP));
  assert.equal(e.name, "not_running");
  assert.match(e.message, /the moorage tree in \/run\/x has ended \(its instance lock is free\)/);
  const effect = plan("fake.effect", false, br, tree);
  effect.resumable = true; // (any successor answers it: no tree received it)
  effect.start(0);
  assert.equal(nameOf(effect.onTimeout(1, EP)), "not_running");
  assert.equal(br.failures, 0);
  assert.equal(br.current(1), "closed");
});

test("a call not safe to repeat under way as the tree ended may have run: outcome_unknown, on a timeout or a drop", () => {
  const br = new CircuitBreaker(5, 60);
  for (const end of ["timeout", "drop"] as const) {
    const tree = new Watched();
    const p = plan("fake.effect", false, br, tree);
    assert.equal(p.start(0).kind, "wait");
    tree.ended = 0.5;
    const e = errorOf(end === "timeout" ? p.onTimeout(1, EP) : p.onActorGone(1, EP, null));
    assert.equal(e.name, "outcome_unknown", end);
    assert.equal(e.message, "the moorage tree in /run/x ended while fake.effect was in flight; it may or may not have run");
    assert.deepEqual(e.detail, { old_epoch: EP, new_epoch: null, request_id: 1 });
  }
  assert.equal(br.failures, 0);
});

test("once the tree was seen ended a new call is not_running unsent, until a tree holds the instance again", () => {
  const br = new CircuitBreaker(5, 60);
  const tree = new Watched();
  const first = plan("fake.effect", false, br, tree);
  assert.equal(first.start(0).kind, "wait");
  assert.equal(tree.looks, 0); // (not seen ended: no look before a send)
  tree.ended = 1;
  assert.equal(nameOf(first.onActorGone(1, EP, null)), "outcome_unknown");
  for (const [op, idempotent] of [["sys.ping", true], ["fake.effect", false]] as const) {
    const p = plan(op, idempotent, br, tree, 2);
    const e = errorOf(p.start(2));
    assert.equal(e.name, "not_running", op);
    assert.equal(p.attempts, 0); // (never sent)
  }
  tree.ended = null; // (another tree took the instance)
  const again = plan("fake.effect", false, br, tree, 3);
  assert.equal(again.start(3).kind, "wait");
  assert.equal(tree.goneSince(), null);
  const next = plan("fake.effect", false, br, tree, 4);
  const looks = tree.looks;
  assert.equal(next.start(4).kind, "wait");
  assert.equal(tree.looks, looks); // (running again: sent without a look)
  tree.ended = 5; // (and it ends too: a call begun before is under way there)
  assert.equal(nameOf(next.onTimeout(30, EP)), "outcome_unknown");
});

test("the rule is the first look that found the tree ended: a call begun after it reached no tree", () => {
  const br = new CircuitBreaker(5, 60);
  const tree = new Watched();
  tree.ended = 1; // (the first look to come finds it ended, as seen at 1)
  const before = plan("fake.effect", false, br, tree, 0.5);
  const after = plan("fake.effect", false, br, tree, 2);
  assert.equal(before.start(0.5).kind, "wait");
  assert.equal(after.start(2).kind, "wait"); // (not seen ended yet: sent)
  assert.equal(nameOf(after.onTimeout(3, EP)), "not_running");
  assert.equal(nameOf(before.onTimeout(3, EP)), "outcome_unknown");
});

test("a dropped connection once the tree has ended is not_running for a call safe to repeat; a new epoch is not asked", () => {
  const br = new CircuitBreaker(5, 60);
  const tree = new Watched();
  const ping = plan("sys.ping", true, br, tree);
  const effect = plan("fake.effect", false, br, tree);
  assert.equal(ping.start(0).kind, "wait");
  assert.equal(effect.start(0).kind, "wait");
  tree.ended = 0.2;
  assert.equal(nameOf(ping.onActorGone(0.5, EP, null)), "not_running");
  const looks = tree.looks;
  const e = errorOf(effect.onActorGone(0.5, EP, "0ddba11ce0ffee00"));
  assert.equal(e.name, "outcome_unknown");
  assert.match(e.message, /restarted/);
  assert.equal(tree.looks, looks);
});

test("a client with no tree to watch, or a tree still running, changes nothing: resent, then timeout at the deadline", () => {
  for (const tree of [undefined, new Watched()]) {
    const br = new CircuitBreaker(5, 60);
    const p = plan("sys.ping", true, br, tree);
    p.start(0);
    assert.equal(p.onTimeout(1).kind, "resend");
    assert.equal(p.onActorGone(1.5, EP, null).kind, "resend");
    assert.equal(nameOf(p.onTimeout(30)), "timeout");
  }
});
