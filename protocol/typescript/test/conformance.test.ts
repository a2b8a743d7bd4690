/**
 * The live conformance suite (protocol/conformance/cases.json, PROTOCOL.md section 18) driven
 * by this client against a real tree. tests/test_clients_typescript.py starts the tree of
 * protocol/conformance/tree.toml and runs `npm test` with MOORAGE_CONFORMANCE_DIR set to its
 * runtime dir; without it these tests are skipped (and that driver fails on a skip).
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { Client } from "../src/client.js";
import { MoorageError } from "../src/errors.js";
import { STREAM_HWM } from "../src/limits.js";
import type { Value } from "../src/msgpack.js";
import type { StreamEvent } from "../src/streams.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");
const CASES = JSON.parse(readFileSync(join(ROOT, "protocol/conformance/cases.json"), "utf8"));
const DIR = process.env.MOORAGE_CONFORMANCE_DIR;
const RUN = randomBytes(4).toString("hex");

type Spec = Record<string, any>;
type Map_ = Record<string, Value>;

async function until<T>(probe: () => Promise<T | null | undefined | false>, what: string, seconds: number): Promise<T> {
  const end = performance.now() + seconds * 1000;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (performance.now() > end) throw new Error(`no ${what} within ${seconds} s`);
  }
}

function message(ev: StreamEvent | null): Extract<StreamEvent, { kind: "message" }> {
  assert.ok(ev !== null && ev.kind === "message", `expected a message, got ${JSON.stringify(ev, (_k, v) => (typeof v === "bigint" ? String(v) : v))}`);
  return ev;
}

const KINDS: Record<string, (c: Client, spec: Spec) => Promise<void>> = {
  async hello_every_actor(c) {
    const actors = ["supervisor", ...Object.keys((await c.call("supervisor", "sup.endpoints")) as Map_)];
    for (const need of ["metrics", "resource", "parser", "watcher", "terminal", "conf"]) assert.ok(actors.includes(need), need);
    for (const actor of actors) {
      const h = await c.hello(actor);
      assert.deepEqual([h.proto, h.max_msg, h.actor], [1, 64 * 1024 * 1024, actor]);
      assert.match(h.ep, /^[0-9a-f]{16}$/);
      assert.equal(c.epoch(actor), h.ep);
    }
  },

  async one_op_per_actor(c, spec) {
    const dir = mkdtempSync(join(tmpdir(), "moorage-conf-"));
    try {
      writeFileSync(join(dir, "probe.txt"), spec.probe_text);
      for (const call of spec.calls) {
        const args = call.args && typeof call.args === "object"
          ? Object.fromEntries(Object.entries(call.args).map(([k, v]) => [k, typeof v === "string" ? v.replace("$dir", dir) : v]))
          : call.args;
        const got = (await c.call(call.actor, call.op, args)) as Map_;
        assert.equal(Array.isArray(got) ? "list" : typeof got === "object" && got !== null ? "map" : typeof got, call.expect.type, call.op);
        for (const k of call.expect.keys ?? []) assert.ok(k in got, `${call.op}: ${k}`);
        for (const [k, v] of Object.entries(call.expect.equals ?? {})) assert.equal(got[k], v, `${call.op}: ${k}`);
        if (call.op === "fs.stat") {
          const st = statSync(join(dir, "probe.txt"), { bigint: true });
          assert.equal(BigInt(got.mtime_ns as number | bigint), st.mtimeNs);
          assert.equal(BigInt(got.ino as number | bigint), st.ino);
          if (st.mtimeNs > BigInt(Number.MAX_SAFE_INTEGER)) assert.equal(typeof got.mtime_ns, "bigint");
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },

  async errors(c, spec) {
    for (const call of spec.calls) {
      await assert.rejects(c.call(call.actor, call.op, call.args), (e: unknown) => {
        assert.ok(e instanceof MoorageError, String(e));
        for (const [k, v] of Object.entries(call.error)) assert.equal((e.error as unknown as Record<string, unknown>)[k], v, `${call.op}: ${k}`);
        for (const k of call.detail_keys ?? []) assert.ok(k in (e.error.detail as object), `${call.op}: detail.${k}`);
        assert.equal(e.attempts, 1);
        return true;
      });
      assert.ok(((await c.call(call.actor, "sys.ping")) as Map_).ep);
    }
  },

  async retry_same_id(c, spec) {
    const before = ((await c.call(spec.actor, spec.count_op)) as Map_).effects as number;
    const first = await c.request(spec.actor, spec.op);
    const again = await c.request(spec.actor, spec.op, null, { id: first.id! });
    assert.ok(first.ok);
    assert.deepEqual(again.body, first.body);
    assert.equal(((await c.call(spec.actor, spec.count_op)) as Map_).effects, before + 1);
  },

  async gap_repaired(c, spec) {
    const topic = `${spec.topic}.${RUN}`;
    // (rcvhwm null: the client's default)
    const sub = c.subscribe(spec.actor, [topic], spec.rcvhwm === null ? {} : { receiveHighWaterMark: spec.rcvhwm });
    try {
      assert.equal(sub.receiveHighWaterMark, spec.rcvhwm ?? STREAM_HWM);
      assert.deepEqual(await sub.untilLive(10), []);
      await c.call(spec.actor, spec.publish_op, { topic, n: spec.n, size: spec.size });
      for (let seq = 1; seq <= spec.n; seq++) {
        let ev = await sub.next(spec.quiet_s);
        if (ev === null) {
          await sub.catchUp(); // quiet before the end: the tail was lost at the high-water mark
          ev = await sub.next(10);
        }
        const m = message(ev);
        assert.deepEqual([m.seq, m.body, m.attachments[0].length], [seq, { i: seq - 1 }, spec.size]);
      }
      assert.ok(sub.tracker.replaysAsked >= 1, "no gap was seen: nothing was repaired");
    } finally {
      sub.close();
    }
  },

  async loss_reported(c, spec) {
    const topic = `${spec.topic}.${RUN}`;
    await c.call(spec.actor, spec.publish_op, { topic, n: spec.n });
    const sub = c.subscribe(spec.actor, [topic], { fromSeq: 1 });
    try {
      const [first, last] = spec.lost;
      assert.deepEqual(await sub.next(10), { kind: "loss", topic, first, last, epoch: c.epoch(spec.actor) });
      for (let seq = last + 1; seq <= spec.n; seq++) assert.equal(message(await sub.next(10)).seq, seq);
      assert.equal(await sub.next(0.2), null);
    } finally {
      sub.close();
    }
  },

  async killed_mid_call(c, spec) {
    const old = (await c.hello(spec.actor)).ep;
    const call = c.call(spec.actor, spec.op, spec.args, { timeout: spec.timeout_s });
    const outcome = call.then(() => null, (e: unknown) => ({ e, at: performance.now() }));
    await until(async () => ((await c.call(spec.actor, "sys.info")) as Map_).pending === 1, "the call in flight", 10);
    const killed = performance.now();
    await c.call("supervisor", "sup.kill", { child: spec.actor });
    const got = await outcome;
    assert.ok(got !== null, "the call succeeded");
    assert.ok(got.e instanceof MoorageError, String(got.e));
    assert.equal(got.e.error.name, "outcome_unknown");
    assert.ok((got.at - killed) / 1000 <= spec.within_s, `ended ${(got.at - killed) / 1000} s after the kill`);
    const detail = got.e.error.detail as Map_;
    assert.equal(detail.old_epoch, old);
    assert.ok(detail.new_epoch === null || (typeof detail.new_epoch === "string" && detail.new_epoch !== old));
  },

  async restart_epoch(c, spec) {
    const topic = `${spec.topic}.${RUN}`;
    const a = (await c.hello(spec.actor)).ep;
    const seen = c.restartsSeen(spec.actor);
    const sub = c.subscribe(spec.actor, [topic]);
    try {
      assert.deepEqual(await sub.untilLive(10), []);
      await c.call(spec.actor, spec.publish_op, { topic, n: 1 });
      const first = message(await sub.next(10));
      assert.deepEqual([first.seq, first.epoch], [1, a]);
      await c.call("supervisor", "sup.restart", { child: spec.actor });
      const b = await until(async () => {
        try {
          const ep = (await c.hello(spec.actor)).ep;
          return ep !== a ? ep : null;
        } catch (e) {
          if (e instanceof MoorageError) return null;
          throw e;
        }
      }, "a new epoch", 20);
      assert.equal(c.restartsSeen(spec.actor), seen + 1);
      await c.call(spec.actor, spec.publish_op, { topic, n: 1 });
      assert.deepEqual(await sub.next(10), { kind: "reset", topic, oldEpoch: a, newEpoch: b });
      const again = message(await sub.next(10));
      assert.deepEqual([again.seq, again.epoch], [1, b]);
    } finally {
      sub.close();
    }
  },
};

for (const spec of CASES.cases as Spec[]) {
  test(`conformance: ${spec.name}`, { skip: DIR === undefined ? "no tree (MOORAGE_CONFORMANCE_DIR unset)" : false, timeout: 60_000 }, async () => {
    const c = new Client({ runtimeDir: DIR, timeout: 10 });
    try {
      await KINDS[spec.kind](c, spec);
    } finally {
      await c.close();
    }
  });
}
