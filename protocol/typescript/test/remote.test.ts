/**
 * A call in remote mode (PROTOCOL.md sections 2 "Remote", 4 and 10): a pinned request, byte
 * for byte as the reference encoder writes it, and a refused key ending every call in
 * flight at once. The pure parts: the live side is tests/test_remote_once_typescript.py.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { ActorLink, CallPlan, type Verdict } from "../src/calls.js";
import * as env from "../src/envelope.js";
import { MoorageError, unauthorized } from "../src/errors.js";
import { Backoff, CircuitBreaker } from "../src/recovery.js";
import { hex, unhex } from "./json.js";

const SID = "4242-1f2e3d4c5b6a";
const EP = "5eed0f1ce0ffee00";
const KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

function plan(id: number, op: string, idempotent: boolean, opts: { timeout?: number; attemptTimeout?: number; breaker?: CircuitBreaker; args?: unknown } = {}): CallPlan {
  const settings = { sid: SID, timeout: 30, attemptTimeout: opts.attemptTimeout ?? 1, backoff: new Backoff(0.01, 2, 0.5, 0) };
  return new CallPlan(id, "alpha", op, opts.args ?? null, idempotent, settings, opts.breaker ?? new CircuitBreaker(),
    () => undefined, opts.timeout ?? 30, [], 0);
}

/** A link to `alpha` whose epoch is known (the first reply recorded it). */
function link(): ActorLink {
  return new ActorLink("alpha", EP);
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

test("a refused key ends every call in flight now: timeout or outcome_unknown, then unauthorized naming the key", () => {
  const br = new CircuitBreaker(1, 0.5);
  br.recordFailure(0);
  const l = link();
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
