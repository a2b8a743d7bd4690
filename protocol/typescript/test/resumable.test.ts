/**
 * Resumable ops (PROTOCOL.md section 10): sys.info says which they are, learnt with the
 * idempotent ones, and a call of one is resent as it is on a drop or a new epoch (any
 * successor of the actor answers its id), never pinned, where a call that is neither is
 * pinned (tcp) or ends `outcome_unknown` (ipc). The pure parts.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { ActorLink, CallPlan, type Verdict, opsOfInfo } from "../src/calls.js";
import * as env from "../src/envelope.js";
import { Backoff, CircuitBreaker } from "../src/recovery.js";

const SID = "4242-1f2e3d4c5b6a";
const EP = "5eed0f1ce0ffee00";
const EP2 = "c0ffee005eed0f1c";

function plan(id: number, op: string, resumable: boolean): CallPlan {
  const settings = { sid: SID, timeout: 30, attemptTimeout: 1, backoff: new Backoff(0.01, 2, 0.5, 0) };
  const p = new CallPlan(id, "terminal", op, { session: "s1", command: "make" }, false, settings, new CircuitBreaker(),
    () => undefined, 30, [], 0);
  p.resumable = resumable;
  return p;
}

function only(changes: [CallPlan, Verdict][], p: CallPlan): Verdict {
  const mine = changes.filter(([q]) => q === p);
  assert.equal(mine.length, 1);
  return mine[0][1];
}

test("sys.info's ops say which are idempotent and which resumable; a malformed entry says neither", () => {
  const info = { ops: {
    "term.exec": { idempotent: false, resumable: true },
    "term.create": { resumable: true },
    "term.list": { idempotent: true, resumable: false },
    "term.kill": { idempotent: false, resumable: false },
    "term.odd": { resumable: 1 },
    "term.bad": null,
  } };
  const { idempotent, resumable } = opsOfInfo(info);
  assert.deepStrictEqual([...idempotent].sort(), ["term.list"]);
  assert.deepStrictEqual([...resumable].sort(), ["term.create", "term.exec"]);
  for (const odd of [null, 7, "x", { ops: null }, { ops: [] }, {}]) {
    assert.deepStrictEqual(opsOfInfo(odd), { idempotent: new Set(), resumable: new Set(), timeouts: new Map() });
  }
});

test("over tcp a resumable call is never pinned: a drop resends the same frames, without `ep`, on every drop", () => {
  const l = new ActorLink("terminal", EP, true);
  const p = plan(1, "term.exec", true);
  assert.equal(l.start(p, 0).kind, "wait");
  assert.equal(p.pin, null);
  const first = p.frames.map((f) => Buffer.from(f).toString("hex"));
  for (const at of [0.5, 0.7]) {
    assert.deepStrictEqual(only(l.onDisconnect(at), p), { kind: "resend", delay: 0 });
    assert.equal(p.pinnedBy, null);
    assert.equal(env.decodeRequest(p.frames).epoch, null);
    assert.deepStrictEqual(p.frames.map((f) => Buffer.from(f).toString("hex")), first);
    assert.equal(p.resend(at).kind, "wait");
    l.sent(p);
  }
});

test("a new epoch resends a resumable call as it is (the successor answers its id), where a pinned call ends", () => {
  const l = new ActorLink("terminal", EP, true);
  const exec = plan(1, "term.exec", true);
  const pinned = plan(2, "term.kill", false);
  l.start(exec, 0);
  l.start(pinned, 0);
  assert.deepStrictEqual([exec.pin, pinned.pin], [null, EP]);
  const changes = l.onEpoch(EP2, 0.5);
  assert.deepStrictEqual(only(changes, exec), { kind: "resend", delay: 0 });
  assert.equal(env.decodeRequest(exec.frames).epoch, null);
  const gone = only(changes, pinned);
  assert.ok(gone.kind === "done" && gone.error?.error.name === "outcome_unknown");
});

test("on ipc a resumable call is resent at a drop too, where a call that is neither ends outcome_unknown", () => {
  const l = new ActorLink("terminal", EP, false);
  const exec = plan(1, "term.exec", true);
  const kill = plan(2, "term.kill", false);
  l.start(exec, 0);
  l.start(kill, 0);
  const changes = l.onDisconnect(0.5);
  assert.deepStrictEqual(only(changes, exec), { kind: "resend", delay: 0 });
  const v = only(changes, kill);
  assert.ok(v.kind === "done" && v.error?.error.name === "outcome_unknown");
});
