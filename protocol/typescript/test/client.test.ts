/**
 * The client over real sockets, against fake actors in this process: an actor's life is a
 * ROUTER at its ipc endpoint (closed, the life ends), its stream an XPUB; a remote tree is a
 * CURVE server on loopback tcp. Then the stream tracker on answers that are not replay answers.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";

import { Router, XPublisher, curveKeyPair } from "zeromq";

import { now } from "../src/calls.js";
import { Client } from "../src/client.js";
import { type Request, decodeRequest, encodeReply, encodeStream, encodeWelcome } from "../src/envelope.js";
import { MoorageError } from "../src/errors.js";
import { MAX_MESSAGE_SIZE, MAX_TOPIC_LEN } from "../src/limits.js";
import { type StreamEvent, StreamTracker } from "../src/streams.js";
import { settled, within } from "./fake_actor.js";

const A = "aaaaaaaaaaaaaaaa";
const B = "bbbbbbbbbbbbbbbb";

const made: string[] = [];
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** A directory of the test's own (short: an ipc path must fit in 107 bytes). */
function scratch(): string {
  const dir = mkdtempSync("/tmp/mtc-");
  made.push(dir);
  return dir;
}

async function take(life: Router): Promise<[Buffer, Request]> {
  const [rid, ...frames] = await life.receive();
  return [rid, decodeRequest(frames)];
}

async function answer(life: Router, epoch: string, body: unknown = "done"): Promise<Request> {
  const [rid, req] = await take(life);
  await life.send([rid, ...encodeReply(req.id, epoch, body)]);
  return req;
}

/** Until `done`, with this thread's event loop held (nothing of the client's runs meanwhile). */
function blockUntil(done: () => boolean, seconds: number, what: string): void {
  const end = now() + seconds;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  while (!done()) {
    assert.ok(now() < end, `${what}: not within ${seconds} s`);
    Atomics.wait(pause, 0, 0, 1);
  }
}

/** This process's open sockets (`socket:[inode]`). */
function sockets(): Set<string> {
  const out = new Set<string>();
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      const link = readlinkSync(`/proc/self/fd/${fd}`);
      if (link.startsWith("socket:")) out.add(link);
    } catch {
      // closed since the listing
    }
  }
  return out;
}

function message(ev: StreamEvent | null): { seq: number; body: unknown } {
  // (the text only for a failure: an event of the frame limit takes seconds to stringify)
  if (ev === null || ev.kind !== "message") assert.fail(`not a message: ${JSON.stringify(ev)}`);
  return ev;
}

test("a reply the actor sent before its connection dropped is its call's: the drop does not end it", async () => {
  // Which of the two the event loop hands out first is not fixed: a few rounds.
  for (let round = 0; round < 5; round++) {
    const dir = scratch();
    const life = new Router({ linger: 1000 }); // (the reply still goes out when it closes)
    await life.bind(`ipc://${dir}/alpha.rpc`);
    const before = sockets();
    const c = new Client({ runtimeDir: dir, learnOps: false, timeout: 5 });
    try {
      const ping = c.call("alpha", "sys.ping");
      await answer(life, A);
      await ping;
      const opened = [...sockets()].filter((s) => !before.has(s)); // both ends of the connection
      const write = c.call("alpha", "fs.write", null, { idempotent: false });
      const [rid, req] = await take(life);
      await life.send([rid, ...encodeReply(req.id, A, "done")]);
      life.close(); // the actor's process ends right after its reply
      // The loop is busy while both arrive: the client's end of the connection closes only
      // once the reply is queued and the drop told.
      blockUntil(() => opened.every((s) => !sockets().has(s)), 5, "the connection closed");
      assert.equal(await write, "done", `round ${round}`);
    } finally {
      await c.close();
    }
  }
});

test("closing the client ends its calls still waiting: timeout when safe to repeat, outcome_unknown when it may have run", async () => {
  const dir = scratch();
  const life = new Router({ linger: 0 });
  await life.bind(`ipc://${dir}/alpha.rpc`);
  const c = new Client({ runtimeDir: dir, learnOps: false, timeout: 30, attemptTimeout: 30 });
  try {
    const settled = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e);
    const ping = settled(c.call("alpha", "sys.ping"));
    const write = settled(c.call("alpha", "fs.write", null, { idempotent: false }));
    await take(life);
    await take(life); // both reached the actor, which never answers
    await c.close();
    const ended = await within(Promise.all([ping, write]), 15, "the calls after close"); // (their deadline: 30 s)
    const names = ended.map((e) => {
      assert.ok(e instanceof MoorageError, String(e));
      assert.match(e.error.message, /the client was closed/);
      return e.error.name;
    });
    assert.deepEqual(names, ["timeout", "outcome_unknown"]);
  } finally {
    life.close();
  }
});

test("a reply that comes after its call ended is a success to the actor's breaker (section 11)", async () => {
  const dir = scratch();
  const life = new Router({ linger: 0 });
  await life.bind(`ipc://${dir}/alpha.rpc`);
  // Two failures would open it: the first call's, then the second's, unless the late reply
  // between them counts as the success it is.
  const c = new Client({ runtimeDir: dir, learnOps: false, timeout: 0.3, attemptTimeout: 0.3, breakerThreshold: 2, breakerCooldown: 60 });
  try {
    const settled = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e);
    const first = settled(c.call("alpha", "fs.read", null, { idempotent: true }));
    const [rid1, req1] = await take(life);
    const late = await within(first, 5, "the first call");
    assert.ok(late instanceof MoorageError && late.error.name === "timeout", String(late));
    // (one attempt, to its deadline: one failure)
    const second = settled(c.call("alpha", "fs.write", null, { idempotent: false, timeout: 1 }));
    await take(life); // the second call is at the actor, which answers the first one now
    await life.send([rid1, ...encodeReply(req1.id, A, "late")]);
    const unknown = await within(second, 5, "the second call");
    assert.ok(unknown instanceof MoorageError && unknown.error.name === "outcome_unknown", String(unknown));
    assert.equal(c.breakerState("alpha"), "closed");
  } finally {
    await c.close();
    life.close();
  }
});

test("with no tree holding the instance lock a client is not_running at once; a held lock lets it be made", async () => {
  const notRunning = (e: unknown) => e instanceof MoorageError && e.error.name === "not_running";
  assert.throws(() => new Client({ instance: `none-${process.pid}` }), notRunning);
  const dir = scratch();
  const file = join(dir, "tree.json");
  writeFileSync(file, JSON.stringify({ moorage: "ready", runtime_dir: dir, endpoints: {} }));
  assert.throws(() => Client.fromConnectionFile(file), notRunning); // no lock file
  writeFileSync(join(dir, "lock"), "");
  assert.throws(() => Client.fromConnectionFile(file), notRunning); // a lock nobody holds
  // A tree's root: an exclusive flock(2) of the file, on this descriptor for as long as it is open.
  const held = openSync(join(dir, "lock"), "r");
  assert.equal(spawnSync("flock", ["-x", "-n", "3"], { stdio: ["ignore", "ignore", "ignore", held] }).status, 0);
  const c = Client.fromConnectionFile(file);
  assert.equal(c.runtimeDir, dir);
  await c.close();
  closeSync(held); // the root ends
  assert.throws(() => Client.fromConnectionFile(file), notRunning);
});

test("a restart heard in a reply after a drop the same life outlived ends what was sent before it", async () => {
  const dir = scratch();
  const c = new Client({ runtimeDir: dir, learnOps: false, timeout: 30 });
  let life = new Router({ linger: 0 });
  try {
    await life.bind(`ipc://${dir}/alpha.rpc`);
    let ping = c.call("alpha", "sys.ping");
    await answer(life, A);
    await ping;
    life.close();
    // The connection comes back to the same life (as a tcp link that dropped under it would)
    life = new Router({ linger: 0 });
    await life.bind(`ipc://${dir}/alpha.rpc`);
    ping = c.call("alpha", "sys.ping");
    const answered = await answer(life, A);
    await ping;
    // ... and later a successor answers one call while another, sent before, is in flight:
    // its drop was missed.
    const write = c.call("alpha", "fs.write", null, { idempotent: false }).then(() => null, (e: unknown) => e);
    ping = c.call("alpha", "sys.ping");
    const taken: [Buffer, Request][] = [];
    while (taken.length < 2) { // (a ping resent on the drop may come twice: its copy is left)
      const [rid, req] = await take(life);
      if (req.id > answered.id) taken.push([rid, req]);
    }
    const [rid, req] = taken.find(([, r]) => r.op === "sys.ping")!;
    await life.send([rid, ...encodeReply(req.id, B, "pong")]);
    assert.equal(await ping, "pong");
    const e = await within(write, 15, "fs.write ended by the restart"); // (its deadline: 30 s)
    assert.ok(e instanceof MoorageError && e.error.name === "outcome_unknown", String(e));
    assert.deepEqual(e.error.detail, { old_epoch: A, new_epoch: B });
  } finally {
    await c.close();
    life.close();
  }
});

test("over tcp a frame of the whole limit gets through CURVE, to the DEALER and to the SUB", async () => {
  const server = curveKeyPair();
  const opts = { linger: 0, curveServer: true, curveSecretKey: server.secretKey };
  const router = new Router(opts);
  const xpub = new XPublisher(opts);
  await router.bind("tcp://127.0.0.1:*");
  await xpub.bind("tcp://127.0.0.1:*");
  const file = join(scratch(), "tree.json");
  writeFileSync(file, JSON.stringify({ runtime_dir: "/nonexistent", remote: {
    transport: "tcp", curve: true, server_key: server.publicKey,
    endpoints: { alpha: { rpc: router.lastEndpoint, pub: xpub.lastEndpoint } } } }));
  const c = new Client({ remote: { connectionFile: file, keys: curveKeyPair() }, learnOps: false, timeout: 3 });
  try {
    const big = new Uint8Array(MAX_MESSAGE_SIZE - 5).fill(7); // a body frame of exactly the limit
    const ping = c.call("alpha", "sys.ping");
    const [rid, req] = await take(router);
    const reply = encodeReply(req.id, A, big);
    assert.equal(reply[2].length, MAX_MESSAGE_SIZE); // CURVE makes it 33 bytes more on the wire
    await router.send([rid, ...reply]);
    assert.equal(((await ping) as Uint8Array).length, big.length);

    const sub = c.subscribe("alpha", ["t"]);
    await xpub.receive(); // the subscription reached the publisher
    await xpub.send(encodeStream("t", 1, A, big));
    const m = message(await sub.next(5));
    assert.deepEqual([m.seq, (m.body as Uint8Array).length], [1, big.length]);
  } finally {
    await c.close();
    router.close();
    xpub.close();
  }
});

test("a call on a connection that never got in says nothing was delivered, never outcome_unknown", async () => {
  // A CURVE server whose key is not the connection file's (a stale file: the tree's keys were
  // remade): it cannot read the client's handshake, and closes each connection.
  const server = curveKeyPair();
  const router = new Router({ linger: 0, curveServer: true, curveSecretKey: server.secretKey });
  await router.bind("tcp://127.0.0.1:*");
  const rpc = router.lastEndpoint!;
  const dir = scratch();
  const file = join(dir, "tree.json");
  writeFileSync(file, JSON.stringify({ runtime_dir: "/nonexistent", remote: {
    transport: "tcp", curve: true, server_key: curveKeyPair().publicKey, endpoints: { alpha: { rpc, pub: rpc } } } }));
  const c = new Client({ remote: { connectionFile: file, keys: curveKeyPair() }, learnOps: false, timeout: 1 });
  const local = new Client({ runtimeDir: dir, learnOps: false, timeout: 1 }); // nothing listens there
  try {
    const failure = async (client: Client, op: string, idempotent: boolean): Promise<MoorageError> => {
      const e = await client.call("alpha", op, null, { idempotent }).then(() => null, (err: unknown) => err);
      assert.ok(e instanceof MoorageError, String(e));
      return e;
    };
    let e = await failure(c, "fs.write", false);
    assert.equal(e.error.name, "unavailable", e.message);
    for (const said of ["nothing was delivered", rpc, "server_key is likely stale"]) assert.ok(e.error.message.includes(said), e.message);
    assert.equal((e.error.detail as { delivered: boolean }).delivered, false);
    e = await failure(c, "sys.ping", true);
    assert.equal(e.error.name, "timeout", e.message);
    assert.ok(e.error.message.includes("nothing was delivered"), e.message);
    e = await failure(local, "fs.write", false);
    assert.equal(e.error.name, "unavailable", e.message);
    assert.ok(e.error.message.includes("the actor is not running there"), e.message);
    router.receiveTimeout = 0;
    const nothing = await router.receive().then(() => "a request reached the server", (err: { code?: string }) => err.code);
    assert.equal(nothing, "EAGAIN");
  } finally {
    await c.close();
    await local.close();
    router.close();
  }
});

test("a subscription whose replay gets an answer that is none reports the gap lost and goes on", async () => {
  const dir = scratch();
  const rpc = new Router({ linger: 0 });
  const pub = new XPublisher({ linger: 0 });
  await rpc.bind(`ipc://${dir}/alpha.rpc`);
  await pub.bind(`ipc://${dir}/alpha.pub`);
  const c = new Client({ runtimeDir: dir, learnOps: false, timeout: 5 });
  try {
    const sub = c.subscribe("alpha", ["t"], { fromSeq: 1 });
    await pub.receive(); // the subscription reached the publisher
    await pub.send(encodeStream("t", 5, A, { n: 5 }));
    const first = sub.next(5); // 1-4 are missing: a replay is asked for
    const req = await answer(rpc, A, { epoch: A, messages: 7 });
    assert.deepEqual([req.op, req.args], ["replay", { topic: "t", from_seq: 1 }]);
    assert.deepEqual(await first, { kind: "loss", topic: "t", first: 1, last: 4, epoch: A });
    assert.equal(message(await sub.next(5)).seq, 5);
    await pub.send(encodeStream("t", 6, A, { n: 6 }));
    assert.equal(message(await sub.next(5)).seq, 6); // not held behind a replay that never ends
  } finally {
    await c.close();
    rpc.close();
    pub.close();
  }
});

test("untilLive returns the events that came before the welcomes and keeps them for next()", async () => {
  const dir = scratch();
  const pub = new XPublisher({ linger: 0 });
  await pub.bind(`ipc://${dir}/alpha.pub`);
  const c = new Client({ runtimeDir: dir, learnOps: false });
  try {
    const sub = c.subscribe("alpha", ["t"]);
    await pub.receive();
    await pub.send(encodeStream("t", 1, A, { n: 1 }));
    await pub.send(encodeWelcome("t", 1, A));
    const early = await sub.untilLive(5);
    assert.deepEqual(early.map((e) => message(e).seq), [1]);
    assert.deepEqual(await sub.next(1), early[0]);
    assert.equal(await sub.next(0.05), null);
  } finally {
    await c.close();
    pub.close();
  }
});

test("a topic longer than MAX_TOPIC_LEN bytes is refused with bad_args before a socket is made; one of the limit is subscribed", async () => {
  const dir = scratch();
  const pub = new XPublisher({ linger: 0 });
  await pub.bind(`ipc://${dir}/alpha.pub`);
  const c = new Client({ runtimeDir: dir, learnOps: false });
  try {
    // A SUB has a descriptor of its own (others may close meanwhile: those of earlier tests).
    const fds = () => new Set(readdirSync("/proc/self/fd").map((fd) => {
      try {
        return `${fd} ${readlinkSync(`/proc/self/fd/${fd}`)}`;
      } catch {
        return fd; // closed since the listing
      }
    }));
    for (const [topic, bytes] of [["x".repeat(MAX_TOPIC_LEN + 1), 257], ["é".repeat(129), 258]] as const) {
      const before = fds();
      assert.throws(() => c.subscribe("alpha", ["ok", topic]), (e: unknown) => {
        assert.ok(e instanceof MoorageError, String(e));
        assert.equal(e.error.name, "bad_args");
        assert.match(e.error.message, new RegExp(`^alpha: a topic of ${bytes} bytes \\(at most 256\\)`));
        return true;
      });
      // (an fd closed while it was listed has no target: not one this subscribe holds)
      assert.deepEqual([...fds()].filter((fd) => !before.has(fd) && fd.includes(" ")), []);
    }
    const topic = "é".repeat(MAX_TOPIC_LEN / 2); // 256 bytes
    const sub = c.subscribe("alpha", [topic]);
    try {
      // The first subscription to reach the publisher: none of the refused ones did.
      assert.deepEqual(await within(pub.receive(), 5, "the subscription"), [Buffer.concat([Buffer.from([1]), Buffer.from(topic)])]);
    } finally {
      sub.close();
    }
  } finally {
    await c.close();
    pub.close();
  }
});

test("an answer that is not a replay answer is a failed replay, and the topic goes on", () => {
  const msg = (seq: number) => ({ topic: "t", seq, epoch: A, body: null, attachments: [], welcome: false });
  const big = 2 ** 53;
  for (const answer of [{ messages: 7 }, { messages: [7] }, { messages: [[big, null, 0]] }, { lost: [] }, { lost: [1, big] },
    { epoch: 1 }, { more: "yes" }, 7, null, [1, 2]]) {
    const t = new StreamTracker(1, ["t"]);
    assert.deepEqual(t.onMessage(msg(5)), [[], { topic: "t", fromSeq: 1 }]);
    const [events, need] = t.onReplay("t", answer as never, []);
    assert.deepEqual([events, need], [[{ kind: "loss", topic: "t", first: 1, last: 4, epoch: A }, { kind: "message", ...msg(5) }], null],
      JSON.stringify(answer));
    assert.deepEqual(t.onMessage(msg(6))[0], [{ kind: "message", ...msg(6) }], JSON.stringify(answer));
  }
});

test("a call to a connection libzmq ended for good ends at its deadline, never waiting in send for ever", async () => {
  const dir = scratch();
  const life = new Router({ linger: 0 });
  await life.bind(`ipc://${dir}/alpha.rpc`);
  const c = new Client({ runtimeDir: dir, learnOps: false, timeout: 1.5, attemptTimeout: 0.5 });
  try {
    const first = settled(c.call("alpha", "sys.ping"));
    // A reply frame over the client's MAXMSGSIZE: libzmq ends the connection as a protocol
    // error and never makes it again, so the DEALER has nowhere to put a request from then on.
    const [rid, req] = await take(life);
    await life.send([rid, ...encodeReply(req.id, A, new Uint8Array(MAX_MESSAGE_SIZE + 16))]);
    // (the first is resent after the drop, the others are sent after it: each ends as its plan
    // says at its deadline, a call that may have run outcome_unknown; the bounds only catch a
    // hang, many times the calls' 1.5 s)
    const ended = [await within(first, 30, "the call answered over the limit")];
    ended.push(await within(settled(c.call("alpha", "sys.ping")), 30, "an idempotent call after it"));
    ended.push(await within(settled(c.call("alpha", "fs.write", null, { idempotent: false })), 30, "a call that may run once"));
    const names = ended.map((e) => (e instanceof MoorageError ? e.error.name : String(e)));
    assert.deepEqual(names, ["timeout", "timeout", "outcome_unknown"]);
  } finally {
    await c.close();
    life.close();
  }
});
