/**
 * A call given no timeout carries its op's declared timeout as its deadline (sys.info's
 * `timeout_ms` plus the trip's margin, at most 60 s), and `session_busy` is resent as a new
 * request (PROTOCOL.md sections 9 and 10): against a fake actor in this process, a ROUTER at
 * its ipc endpoint that reads the frames the client sends.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { after, test } from "node:test";

import { Router } from "zeromq";

import { Client } from "../src/client.js";
import { type Request, decodeRequest, encodeError, encodeReply } from "../src/envelope.js";
import { wireError } from "../src/errors.js";

const A = "aaaaaaaaaaaaaaaa";
const OPS = {
  "alpha.make": { timeout_ms: 30_000, idempotent: false, resumable: false },
  "alpha.run": { timeout_ms: 86_400_000, idempotent: false, resumable: false },
};

const made: string[] = [];
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A fake actor's life at `alpha`'s endpoint in a directory of its own. */
async function alpha(): Promise<[string, Router]> {
  const dir = mkdtempSync("/tmp/mto-");
  made.push(dir);
  const life = new Router({ linger: 0 });
  await life.bind(`ipc://${dir}/alpha.rpc`);
  return [dir, life];
}

/** Take the next request; answer sys.info with OPS at once, and hand any other back. */
async function next(life: Router): Promise<[Buffer, Request]> {
  for (;;) {
    const [rid, ...frames] = await life.receive();
    const req = decodeRequest(frames);
    if (req.op !== "sys.info") return [rid, req];
    await life.send([rid, ...encodeReply(req.id, A, { ops: OPS })]);
  }
}

/** Seconds from now to a request's deadline. */
const left = (req: Request): number => (req.deadlineMs! - Date.now()) / 1000;

test("a call given no timeout carries its op's declared timeout, at most 60 s; a given one as given", { timeout: 20_000 }, async () => {
  const [dir, life] = await alpha();
  const c = new Client({ runtimeDir: dir, timeout: 1 });
  try {
    const calls = [c.call("alpha", "alpha.make"), c.call("alpha", "alpha.run"), c.call("alpha", "alpha.make", null, { timeout: 2 }),
      c.call("alpha", "alpha.other")];
    const got = new Map<string, number[]>();
    for (let i = 0; i < calls.length; i++) {
      const [rid, req] = await next(life);
      got.set(req.op, [...(got.get(req.op) ?? []), left(req)]);
      await life.send([rid, ...encodeReply(req.id, A, "done")]);
    }
    await Promise.all(calls);
    const [declared, given] = got.get("alpha.make")!.sort((a, b) => b - a);
    assert.ok(declared > 29 && declared <= 30.5, `term.create-like: ${declared} s`);
    assert.ok(given > 1 && given <= 2, `given: ${given} s`);
    const capped = got.get("alpha.run")![0];
    assert.ok(capped > 59 && capped <= 60, `a day, capped: ${capped} s`);
    const other = got.get("alpha.other")![0];
    assert.ok(other <= 1, `not declared, the client's: ${other} s`);
  } finally {
    await c.close();
    life.close();
  }
});

test("session_busy is resent as a new request: a fresh id, the same deadline, until it runs", { timeout: 20_000 }, async () => {
  const [dir, life] = await alpha();
  const c = new Client({ runtimeDir: dir, timeout: 10 });
  try {
    const call = c.call("alpha", "alpha.make");
    const seen: Request[] = [];
    for (let i = 0; i < 3; i++) {
      const [rid, req] = await next(life);
      seen.push(req);
      const busy = wireError("session_busy", "a command is running");
      await life.send([rid, ...(i < 2 ? encodeError(req.id, A, busy) : encodeReply(req.id, A, "ran"))]);
    }
    assert.equal(await call, "ran");
    assert.equal(new Set(seen.map((r) => r.id)).size, 3);
    assert.equal(new Set(seen.map((r) => r.deadlineMs)).size, 1);
  } finally {
    await c.close();
    life.close();
  }
});

test("session_busy past its budget of 3 ends the call with it", { timeout: 20_000 }, async () => {
  const [dir, life] = await alpha();
  const c = new Client({ runtimeDir: dir, timeout: 10 });
  try {
    const call = c.call("alpha", "alpha.make").then(() => null, (e: unknown) => e);
    for (let i = 0; i < 4; i++) {
      const [rid, req] = await next(life);
      await life.send([rid, ...encodeError(req.id, A, wireError("session_busy", "a command is running"))]);
    }
    const e = (await call) as { error: { name: string }; attempts: number };
    assert.equal(e.error.name, "session_busy");
    assert.equal(e.attempts, 4);
  } finally {
    await c.close();
    life.close();
  }
});
