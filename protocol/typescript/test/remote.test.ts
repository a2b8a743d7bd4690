/**
 * A call in remote mode (PROTOCOL.md sections 2 "Remote", 4 and 10): a pinned request, byte
 * for byte as the reference encoder writes it; a call that may have run resent pinned (the
 * header's `ep`) on a dropped connection and on the timeout ladder, the breaker left out of
 * it; and a refused key ending every call in flight at once. The pure parts: the live side
 * is tests/test_remote_once_typescript.py.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { ActorLink, CallPlan, TIMEOUT_RETRIES, type Verdict } from "../src/calls.js";
import * as env from "../src/envelope.js";
import { MoorageError, toWire, unauthorized, wireError } from "../src/errors.js";
import { Backoff, CircuitBreaker } from "../src/recovery.js";
import { hex, unhex } from "./json.js";

const SID = "4242-1f2e3d4c5b6a";
const EP = "5eed0f1ce0ffee00";
const EP2 = "c0ffee005eed0f1c";
const KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

function plan(id: number, op: string, idempotent: boolean, opts: { timeout?: number; attemptTimeout?: number; breaker?: CircuitBreaker; args?: unknown } = {}): CallPlan {
  const settings = { sid: SID, timeout: 30, attemptTimeout: opts.attemptTimeout ?? 1, backoff: new Backoff(0.01, 2, 0.5, 0) };
  return new CallPlan(id, "alpha", op, opts.args ?? null, idempotent, settings, opts.breaker ?? new CircuitBreaker(),
    () => undefined, opts.timeout ?? 30, [], 0);
}

/** A link to `alpha` whose epoch is known (the first reply recorded it). */
function link(remote: boolean, epoch: string | null = EP): ActorLink {
  return new ActorLink("alpha", epoch, remote);
}

function only(changes: [CallPlan, Verdict][], p: CallPlan): Verdict {
  const mine = changes.filter(([q]) => q === p);
  assert.equal(mine.length, 1);
  return mine[0][1];
}

function errorOf(v: Verdict): MoorageError {
  assert.equal(v.kind, "done");
  assert.ok(v.kind === "done" && v.error !== undefined);
  return v.error;
}

test("a pinned request is the same frames with `ep` last in the header, byte for byte as envelope.py's pin_request", () => {
  const frames = env.encodeRequest(7, SID, "fake.held", { n: 1 }, 1767225600123, [new TextEncoder().encode("att")]);
  assert.deepStrictEqual(env.pinRequest(frames, EP).map(hex), [
    "4d4f4f5231",
    "85a2696407a3736964b1343234322d316632653364346335623661a26f70a966616b652e68656c64ab646561646c696e655f6d73cf0000019b76daa87ba26570b035656564306631636530666665653030",
    "81a16e01",
    "617474",
  ]);
  const bare = env.pinRequest(env.encodeRequest(300, SID, "fake.effect"), EP);
  assert.deepStrictEqual(bare.map(hex), [
    "4d4f4f5231",
    "84a26964cd012ca3736964b1343234322d316632653364346335623661a26f70ab66616b652e656666656374a26570b035656564306631636530666665653030",
    "c0",
  ]);
  const r = env.decodeRequest(bare);
  assert.deepStrictEqual([r.id, r.sid, r.op, r.deadlineMs, r.epoch], [300, SID, "fake.effect", null, EP]);
  assert.equal(env.decodeRequest(env.encodeRequest(300, SID, "fake.effect")).epoch, null);
  const notStr = [env.TAG, unhex("84a26964cd012ca3736964b1343234322d316632653364346335623661a26f70ab66616b652e656666656374a2657001"), unhex("c0")];
  assert.throws(() => env.decodeRequest(notStr), (e: unknown) => e instanceof Error && /ep must be a string/.test(e.message));
});

test("a remote link pins a non-idempotent call to the epoch known at its first send; never an idempotent one, never on ipc", () => {
  const remote = link(true);
  const effect = plan(1, "fake.effect", false);
  assert.equal(remote.start(effect, 0).kind, "wait");
  assert.equal(effect.pin, EP);
  assert.equal(effect.pinnedBy, null); // the first attempt carries no `ep`
  assert.equal(env.decodeRequest(effect.frames).epoch, null);
  remote.onEpoch(EP2, 0.1); // learnt later: the pin stays the life the call went to
  assert.equal(effect.pin, EP);

  const ping = plan(2, "sys.ping", true);
  remote.start(ping, 0);
  assert.equal(ping.pin, null);
  const unknown = plan(3, "fake.effect", false);
  link(true, null).start(unknown, 0);
  assert.equal(unknown.pin, null);
  const ipc = plan(4, "fake.effect", false);
  link(false).start(ipc, 0);
  assert.equal(ipc.pin, null);
});

test("over tcp a drop resends a non-idempotent call pinned, the same frames plus `ep`, on every drop", () => {
  const l = link(true);
  const p = plan(1, "fake.held", false, { args: { n: 1 } });
  l.start(p, 0);
  const first = env.decodeRequest(p.frames);
  let v = only(l.onDisconnect(0.5), p);
  assert.deepStrictEqual(v, { kind: "resend", delay: 0 });
  assert.equal(p.pinnedBy, "drop");
  const pinned = env.decodeRequest(p.frames);
  assert.deepStrictEqual(pinned, { ...first, epoch: EP });
  assert.equal(p.resend(0.5).kind, "wait");
  l.sent(p);
  v = only(l.onDisconnect(0.7), p); // dropped again: resent again, the same pinned frames
  assert.equal(v.kind, "resend");
  assert.deepStrictEqual(env.decodeRequest(p.frames), pinned);
  assert.ok(l.inFlight.has(p.id));
});

test("over tcp a call pinned to no known epoch, and any such call on ipc, ends outcome_unknown at a drop", () => {
  for (const l of [link(true, null), link(false)]) {
    const p = plan(1, "fake.held", false);
    l.start(p, 0);
    const e = errorOf(only(l.onDisconnect(0.5), p));
    assert.equal(e.error.name, "outcome_unknown");
    assert.match(e.error.message, /dropped its connection while fake\.held was in flight/);
    assert.ok(!l.inFlight.has(p.id));
  }
});

test("a new epoch ends a pinned call at once: the life it is pinned to is gone", () => {
  const l = link(true);
  const p = plan(1, "fake.held", false);
  l.start(p, 0);
  const e = errorOf(only(l.onEpoch(EP2, 0.5), p));
  assert.equal(e.error.name, "outcome_unknown");
  assert.deepStrictEqual(e.error.detail, { old_epoch: EP, new_epoch: EP2 });
});

test("an idempotent call's timed-out attempts climb the ladder, then the last waits for the deadline", () => {
  // (it ended `timeout` after its ladder, whatever its own timeout: 120 s for fs.sync)
  const p = plan(1, "fake.read", true, { attemptTimeout: 1, timeout: 30, breaker: new CircuitBreaker(100) });
  let v = link(false).start(p, 0);
  assert.deepStrictEqual(v, { kind: "wait", until: 1 });
  let at = 1;
  for (let n = 1; n <= TIMEOUT_RETRIES; n++) {
    v = p.onTimeout(at);
    assert.equal(v.kind, "resend", `attempt ${n}`);
    at += (v as { delay: number }).delay;
    v = p.resend(at);
    assert.equal(v.kind, "wait");
    const until = (v as { until: number }).until;
    assert.equal(until, n < TIMEOUT_RETRIES ? at + 2 ** n : 30, `attempt ${n + 1}`);
    at = until;
  }
  assert.equal(errorOf(p.onTimeout(30)).error.name, "timeout");
});

test("a pinned call's timed-out attempts climb the ladder, then the last waits for the deadline", () => {
  const p = plan(1, "fake.held", false, { attemptTimeout: 1, timeout: 30 });
  let v = link(true).start(p, 0);
  assert.deepStrictEqual(v, { kind: "wait", until: 1 });
  let at = 1;
  for (let n = 1; n <= TIMEOUT_RETRIES; n++) {
    v = p.onTimeout(at);
    assert.deepStrictEqual(v, { kind: "resend", delay: 0 });
    assert.equal(p.pinnedBy, "timeout");
    assert.equal(env.decodeRequest(p.frames).epoch, EP);
    v = p.resend(at);
    assert.equal(v.kind, "wait");
    const until = (v as { until: number }).until;
    assert.equal(until, n < TIMEOUT_RETRIES ? at + 2 ** n : 30, `attempt ${n + 1}`);
    at = until;
  }
  const e = errorOf(p.onTimeout(30));
  assert.equal(e.error.name, "outcome_unknown");
  assert.equal(e.attempts, TIMEOUT_RETRIES + 1);

  const ipc = plan(2, "fake.held", false);
  assert.deepStrictEqual(link(false).start(ipc, 0), { kind: "wait", until: 30 }); // one attempt, the whole deadline
});

test("the breaker is not asked for a pinned resend; an unpinned resend still asks it", () => {
  const br = new CircuitBreaker(1, 10);
  const l = link(true);
  const p = plan(1, "fake.held", false, { breaker: br });
  const idem = plan(2, "sys.ping", true, { breaker: br });
  l.start(p, 0);
  l.start(idem, 0);
  br.recordFailure(0.1); // another call's timeout opens it
  assert.equal(br.current(0.2), "open");
  const changes = l.onDisconnect(0.2);
  assert.equal(only(changes, p).kind, "resend");
  assert.equal(only(changes, idem).kind, "resend");
  assert.equal(p.resend(0.2).kind, "wait"); // sent: not refused `circuit_open`
  // Refused, it ends with its own outcome: it was sent (no reply), so never `circuit_open`.
  assert.equal(errorOf(idem.resend(0.2)).error.name, "timeout");
});

test("an outcome_unknown answering a resend pinned by a drop says the connection dropped, and keeps what the actor told", () => {
  const told = { old_epoch: EP, new_epoch: EP2, request_id: 1 };
  const refusal = { id: 1, ok: false, epoch: EP2, body: toWire(wireError("outcome_unknown", "pinned to a life that ended", { detail: told })) as never, attachments: [] };
  const l = link(true);
  const p = plan(1, "term.exec", false, { args: { session: "s1", command: "make" } });
  l.start(p, 0);
  only(l.onDisconnect(0.5), p);
  let e = errorOf(p.onReply(refusal, 0.6));
  assert.equal(e.error.name, "outcome_unknown");
  assert.equal(e.error.message, "alpha's connection dropped while term.exec was in flight; pinned to a life that ended");
  assert.deepStrictEqual(e.error.detail, { ...told, session: "s1" });

  const q = plan(1, "fake.held", false);
  link(true).start(q, 0);
  q.onTimeout(1);
  e = errorOf(q.onReply(refusal, 1.5));
  assert.equal(e.error.message, "pinned to a life that ended"); // (pinned by a timeout: as told)
});

test("a refused key ends every call in flight now: timeout or outcome_unknown, then unauthorized naming the key", () => {
  const br = new CircuitBreaker(1, 0.5);
  br.recordFailure(0);
  const l = link(true);
  const held = plan(1, "fake.held", false, { breaker: br });
  assert.equal(l.start(held, 1).kind, "wait"); // the half-open breaker's probe
  const ping = plan(2, "sys.ping", true);
  l.start(ping, 1);
  const changes = l.onRefused(1.5);
  assert.equal(changes.length, 2);
  assert.equal(l.inFlight.size, 0);
  const heldErr = errorOf(only(changes, held));
  assert.equal(heldErr.error.name, "outcome_unknown");
  assert.match(heldErr.error.message, /^no reply: the tree refused this client's key/);
  assert.equal(errorOf(only(changes, ping)).error.name, "timeout");
  assert.ok(br.allow(1.5), "the probe was given back");

  const named = unauthorized(heldErr, KEY);
  assert.equal(named.error.name, "unauthorized");
  assert.ok(named.error.message.includes(`moorage keys allow '${KEY}'`), named.error.message);
  assert.ok(named.error.message.includes("outcome_unknown: no reply: the tree refused"), named.error.message);

  // While it stands, a new call ends at once; a handshake that succeeds clears it.
  const later = plan(3, "fake.work", false);
  assert.equal(errorOf(l.start(later, 2)).error.name, "outcome_unknown");
  l.onHandshake();
  assert.equal(l.start(plan(4, "fake.work", false), 2).kind, "wait");
});
