/**
 * Closing: a subscription's waiting `next()` and `for await` end with null; a call waiting out a
 * back-off ends at once; a closed client sends nothing more (a call that raced close() included)
 * and Node exits; a socket that cannot connect is closed, its error `bad_args`. Against fake
 * actors over real sockets (test/fake_actor.ts).
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client } from "../src/client.js";
import { encodeError, encodeReply, encodeStream } from "../src/envelope.js";
import { MoorageError, wireError } from "../src/errors.js";
import type { StreamEvent } from "../src/streams.js";
import { CLIENT_MODULE, FakeActor, runNode, scratch, settled, until, within } from "./fake_actor.js";

const A = "aaaaaaaaaaaaaaaa";

function named(e: unknown, name: string): MoorageError {
  assert.ok(e instanceof MoorageError, `not a MoorageError: ${String(e)}`);
  assert.equal(e.error.name, name, e.message);
  return e;
}

test("closing a subscription or its client while next() or for await waits ends them with null", async () => {
  const actor = await FakeActor.bind(scratch());
  const c = new Client({ runtimeDir: actor.dir, learnOps: false });
  try {
    const sub = c.subscribe("alpha", ["t"]);
    await actor.pub.receive(); // the subscription reached the publisher
    const waiting = sub.next();
    sub.close();
    assert.equal(await within(waiting, 10, "next() after close()"), null);
    assert.equal(await sub.next(), null);

    // A for await over a stream, and the client closed under it (as an editor shuts down).
    const other = c.subscribe("alpha", ["u"]);
    await actor.pub.receive();
    const got: StreamEvent[] = [];
    const consumed = (async () => {
      for await (const ev of other) got.push(ev);
      return "ended";
    })();
    await actor.pub.send(encodeStream("u", 1, A, { n: 1 }));
    await until(() => got.length === 1, 10, "the first event");
    await c.close();
    assert.equal(await within(consumed, 10, "the for await after close()"), "ended");
    assert.deepEqual(got.map((e) => e.kind === "message" && e.seq), [1]);
  } finally {
    await c.close();
    actor.close();
  }
});

test("close() during a back-off (busy, session_busy) ends the call at once, cancelled", async () => {
  for (const refusal of ["session_busy", "busy"]) {
    const actor = await FakeActor.bind(scratch());
    // (the call would be sent again in 60 s, and its deadline is 100 s away)
    actor.serve((req) => encodeError(req.id, A, wireError(refusal, "a command is running", { retry_after_ms: 60_000 })));
    const c = new Client({ runtimeDir: actor.dir, learnOps: false });
    try {
      const call = settled(c.call("alpha", "term.exec", { session: "s", command: "true" }, { idempotent: false, timeout: 100 }));
      // The refusal's epoch is noted as it is read; the call takes its verdict before the
      // event loop turns again, and waits out its back-off.
      await until(() => c.epoch("alpha") === A, 10, "the refusal");
      await c.close();
      const e = named(await within(call, 10, `the ${refusal} call after close()`), "cancelled");
      assert.match(e.error.message, new RegExp(`the client was closed before term.exec was sent again .*answered ${refusal}`));
      assert.equal(actor.requests.length, 1);
    } finally {
      await c.close();
      actor.close();
    }
  }
});

test("a closed client refuses calls and subscriptions, cancelled; a call that was learning the actor's ops when close() ran is not sent", async () => {
  const actor = await FakeActor.bind(scratch());
  // sys.info is never answered (the call learning it waits); anything else is.
  actor.serve((req) => (req.op === "sys.info" ? null : encodeReply(req.id, A, "done")));
  const c = new Client({ runtimeDir: actor.dir, learnOps: true, timeout: 30 });
  try {
    const write = settled(c.call("alpha", "fs.write", { path: "/x", data: "y" }));
    await until(() => actor.requests.length === 1, 10, "sys.info at the actor");
    assert.equal(actor.requests[0].op, "sys.info");
    await c.close();
    named(await within(write, 10, "the racing call"), "cancelled");
    named(await within(settled(c.call("alpha", "sys.ping")), 10, "a call after close()"), "cancelled");
    assert.throws(() => c.subscribe("alpha"), (e: unknown) => !!named(e, "cancelled"));
    assert.deepEqual(actor.requests.map((r) => r.op), ["sys.info"]);
  } finally {
    await c.close();
    actor.close();
  }
});

test("Node exits after close(), with a call that raced it and calls made after it", async () => {
  const actor = await FakeActor.bind(scratch());
  actor.serve((req) => (req.op === "sys.info" ? null : encodeReply(req.id, A, "done")));
  try {
    const program = `
      import { Client } from ${JSON.stringify(CLIENT_MODULE)};
      const name = (p) => p.then(() => "answered", (e) => e?.error?.name ?? String(e));
      const c = new Client({ runtimeDir: ${JSON.stringify(actor.dir)}, learnOps: true, timeout: 30 });
      const racing = name(c.call("alpha", "fs.write", { path: "/x", data: "y" }));
      await new Promise((r) => setImmediate(r));
      await c.close();
      const after = name(c.call("alpha", "sys.ping"));
      let subscribed;
      try { c.subscribe("alpha"); subscribed = "subscribed"; } catch (e) { subscribed = e?.error?.name ?? String(e); }
      console.log(JSON.stringify([await racing, await after, subscribed]));
    `;
    const { code, out } = await runNode(program, 30);
    assert.deepEqual([code, out.trim()], [0, JSON.stringify(["cancelled", "cancelled", "cancelled"])]);
    assert.ok(actor.requests.every((r) => r.op === "sys.info"), JSON.stringify(actor.requests.map((r) => r.op)));
  } finally {
    actor.close();
  }
});

test("a socket that cannot connect (an ipc path over 107 bytes) is closed, its call, subscription or pusher bad_args, and Node exits", async () => {
  const dir = scratch();
  const long = "x".repeat(200);
  const longDir = `${dir}/${"d".repeat(110)}`; // (its metrics.in: the latency pusher's socket)
  const c = new Client({ runtimeDir: dir, timeout: 5 });
  try {
    const e = named(await within(settled(c.call(long, "sys.ping")), 10, "the call"), "bad_args");
    assert.match(e.error.message, /no rpc socket to connect to/);
    assert.throws(() => c.subscribe(long, ["t"]), (err: unknown) => /no pub socket to connect to/.test(named(err, "bad_args").error.message));
    assert.throws(() => new Client({ runtimeDir: longDir, metricsName: "t" }),
      (err: unknown) => /no metrics.in socket to connect to/.test(named(err, "bad_args").error.message));
  } finally {
    await c.close();
  }
  const program = `
    import { Client } from ${JSON.stringify(CLIENT_MODULE)};
    const c = new Client({ runtimeDir: ${JSON.stringify(dir)}, timeout: 5 });
    const out = [];
    try { await c.call(${JSON.stringify(long)}, "sys.ping"); out.push("answered"); } catch (e) { out.push(e?.error?.name ?? e?.code); }
    try { c.subscribe(${JSON.stringify(long)}); out.push("subscribed"); } catch (e) { out.push(e?.error?.name ?? e?.code); }
    await c.close();
    try { new Client({ runtimeDir: ${JSON.stringify(longDir)}, metricsName: "t" }); out.push("made"); } catch (e) { out.push(e?.error?.name ?? e?.code); }
    console.log(JSON.stringify(out));
  `;
  const { code, out } = await runNode(program, 30);
  assert.deepEqual([code, out.trim()], [0, JSON.stringify(["bad_args", "bad_args", "bad_args"])]);
});

test("a call refused stopping whose actor exits during the back-off is sent to the successor, not told outcome_unknown", async () => {
  const dir = scratch();
  const first = await FakeActor.bind(dir);
  const c = new Client({ runtimeDir: dir, learnOps: false, timeout: 30 });
  let second: FakeActor | null = null;
  try {
    first.serve((r) => (r.op === "x.op"
      ? encodeError(r.id, A, wireError("stopping", "exiting", { retry_after_ms: 1500 }))
      : encodeReply(r.id, A, "pong")));
    assert.equal(await c.call("alpha", "sys.ping"), "pong"); // (the actor's life known, as ever)
    const call = c.call("alpha", "x.op", { n: 1 }).then((r) => `answered ${String(r)}`, (e: unknown) => e);
    await until(() => first.requests.length === 2, 10, "x.op at the actor");
    // (its answer came before the ping's, on the same connection: the refusal is read, and
    // the call waits out its back-off while the actor exits)
    assert.equal(await c.call("alpha", "sys.ping"), "pong");
    first.close();
    second = await FakeActor.bind(dir);
    second.serve((r) => encodeReply(r.id, "bbbbbbbbbbbbbbbb", "done"));
    const outcome = await within(call, 20, "the call");
    assert.equal(outcome, "answered done", outcome instanceof MoorageError ? outcome.message : String(outcome));
    assert.deepEqual(second.requests.map((r) => r.op), ["x.op"]);
  } finally {
    await c.close();
    second?.close();
  }
});
