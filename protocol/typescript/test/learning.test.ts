/**
 * A client learns an actor's ops once, however many first calls it makes at once (section 10):
 * one sys.info in flight per actor, every other first call waiting for its answer, or its
 * failure (then going on as a call to an actor whose ops are not known; the next first call
 * asks again), each no longer than its own share of its time. Against a fake actor in this
 * process: a ROUTER at the actor's ipc endpoint that counts what it takes. The live case, on a
 * real tree, is tests/test_clients_learning_once.py.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/client.js";
import { encodeReply } from "../src/envelope.js";
import { FakeActor, scratch, settled, within } from "./fake_actor.js";

const A = "aaaaaaaaaaaaaaaa";
const OPS = { "alpha.do": { idempotent: false, resumable: false, timeout_ms: 1000 } };
const N = 200;

/** An actor that answers every call at once (its count so far), and sys.info with OPS unless
 * told to leave it unanswered. */
async function alpha(answerInfo: boolean): Promise<FakeActor> {
  const actor = await FakeActor.bind(scratch(), "alpha");
  let done = 0;
  actor.serve((req) => {
    if (req.op === "sys.info") return answerInfo ? encodeReply(req.id, A, { ops: OPS }) : null;
    done += 1;
    return encodeReply(req.id, A, { n: done });
  });
  return actor;
}

const asked = (actor: FakeActor): number => actor.requests.filter((r) => r.op === "sys.info").length;

/** `n` first calls made at once (each starts before any reply can be read): their results. */
function firstCalls(c: Client, n: number, timeout?: number): Promise<unknown[]> {
  return Promise.all(Array.from({ length: n }, () => c.call("alpha", "alpha.do", null, timeout === undefined ? {} : { timeout })));
}

test("first calls made at once ask the actor's sys.info once, and each is answered", { timeout: 30_000 }, async () => {
  const actor = await alpha(true);
  const c = new Client({ runtimeDir: actor.dir, timeout: 20, attemptTimeout: 20 });
  try {
    const got = (await within(firstCalls(c, N), 20, "the calls")) as { n: number }[];
    assert.deepEqual(got.map((r) => r.n).sort((x, y) => x - y), Array.from({ length: N }, (_, i) => i + 1));
    assert.equal(asked(actor), 1);
    assert.equal(actor.requests.length, N + 1);
    await c.call("alpha", "alpha.do");
    assert.equal(asked(actor), 1, "learned: not asked again");
  } finally {
    await c.close();
    actor.close();
  }
});

test("a learning that fails lets each first call waiting for it go on, and the next first call asks again", { timeout: 30_000 }, async () => {
  const actor = await alpha(false);
  // (a share of 0.5 s; each attempt lasts to its deadline: one sys.info sent)
  const c = new Client({ runtimeDir: actor.dir, timeout: 1, attemptTimeout: 20 });
  try {
    const got = await within(firstCalls(c, N), 20, "the calls");
    assert.equal(got.length, N);
    assert.equal(asked(actor), 1);
    assert.equal(actor.requests.length, N + 1);
    await within(c.call("alpha", "alpha.do"), 20, "the next call");
    assert.equal(asked(actor), 2, "not learned: asked again");
  } finally {
    await c.close();
    actor.close();
  }
});

test("a first call whose share ends before the learning in flight goes on then, and the learning goes on", { timeout: 30_000 }, async () => {
  const actor = await alpha(false);
  const c = new Client({ runtimeDir: actor.dir, timeout: 1, attemptTimeout: 60 });
  try {
    let longOver = false;
    const long = settled(c.call("alpha", "alpha.do", null, { timeout: 60 })).finally(() => (longOver = true));
    const short = await within(c.call("alpha", "alpha.do", null, { timeout: 0.4 }), 20, "the short call");
    assert.deepEqual(short, { n: 1 });
    assert.equal(longOver, false, "the long call still waits for the learning");
    assert.equal(asked(actor), 1);
    await c.close();
    await within(long, 20, "the long call, once the client is closed");
  } finally {
    await c.close();
    actor.close();
  }
});
