/**
 * However a subscription's replay ends, its topic goes on (PROTOCOL.md section 12): a page that
 * does not move the topic on, or an answer claiming attachments that did not come, is a failed
 * replay (the gap reported lost), and what catchUp() recovers reaches a next() already waiting.
 * Against a fake actor over real sockets (test/fake_actor.ts), then the stream tracker alone.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, type Subscription } from "../src/client.js";
import { type Request, encodeReply, encodeStream } from "../src/envelope.js";
import { type StreamEvent, StreamTracker } from "../src/streams.js";
import { FakeActor, scratch, within } from "./fake_actor.js";

const A = "aaaaaaaaaaaaaaaa";

function message(seq: number) {
  return { kind: "message", topic: "t", seq, epoch: A, body: { n: seq }, attachments: [], welcome: false };
}

function loss(first: number, last: number) {
  return { kind: "loss", topic: "t", first, last, epoch: A };
}

function replayAnswer(seqs: number[], more = false): Record<string, unknown> {
  return { epoch: A, first_seq: 1, last_seq: 9, messages: seqs.map((s) => [s, { n: s }, 0]), lost: null, more };
}

/** A subscription to `t` of an actor whose every replay is answered `reply(req)`; it got 1,
 * and 3 is published next (2 never was: a gap). */
async function withAGap(actor: FakeActor, c: Client, reply: (req: Request) => Uint8Array[]): Promise<Subscription> {
  actor.serve(reply);
  const sub = c.subscribe("alpha", ["t"]);
  await actor.pub.receive(); // the subscription reached the publisher
  await actor.pub.send(encodeStream("t", 1, A, { n: 1 }));
  assert.deepEqual(await within(sub.next(20), 10, "message 1"), message(1));
  await actor.pub.send(encodeStream("t", 3, A, { n: 3 }));
  return sub;
}

/** The gap was reported lost, the held message delivered, and the next one is too. */
async function goesOn(actor: FakeActor, sub: Subscription): Promise<void> {
  assert.deepEqual(await within(sub.next(20), 10, "the loss"), loss(2, 2));
  assert.deepEqual(await within(sub.next(20), 10, "message 3"), message(3));
  await actor.pub.send(encodeStream("t", 4, A, { n: 4 }));
  assert.deepEqual(await within(sub.next(20), 10, "message 4"), message(4));
  assert.equal(sub.tracker.replaying.size, 0);
}

const ANSWERS: [string, (req: Request) => Uint8Array[], number[]][] = [
  ["with a page cut with nothing in it", (req) => encodeReply(req.id, A, replayAnswer([], true)), [2]],
  // One such answer is asked again (the held message may have been published after it); the
  // second ends the replay.
  ["twice with the gap where it was", (req) => encodeReply(req.id, A, replayAnswer([])), [2, 2]],
  ["with a message claiming an attachment that did not come",
    (req) => encodeReply(req.id, A, { ...replayAnswer([]), messages: [[2, { n: 2 }, 1]] }), [2]],
];

for (const [what, reply, asked] of ANSWERS) {
  test(`a replay answered ${what} fails: the gap is reported lost and the topic goes on`, async () => {
    const actor = await FakeActor.bind(scratch());
    const c = new Client({ runtimeDir: actor.dir, learnOps: false });
    try {
      await goesOn(actor, await withAGap(actor, c, reply));
      assert.deepEqual(actor.requests.map((r) => (r.args as { from_seq: number }).from_seq), asked);
    } finally {
      await c.close();
      actor.close();
    }
  });
}

test("what catchUp() recovers reaches a next() already waiting on a quiet stream", async () => {
  const actor = await FakeActor.bind(scratch());
  actor.serve((req) => encodeReply(req.id, A, replayAnswer([2])));
  const c = new Client({ runtimeDir: actor.dir, learnOps: false });
  try {
    const sub = c.subscribe("alpha", ["t"]);
    await actor.pub.receive();
    await actor.pub.send(encodeStream("t", 1, A, { n: 1 }));
    assert.deepEqual(await within(sub.next(20), 10, "message 1"), message(1));
    const waiting = sub.next(); // 2 was published, never reached us, and nothing more comes
    await sub.catchUp();
    assert.deepEqual(await within(waiting, 10, "the waiting next()"), message(2));
    assert.equal(await sub.next(0), null);
  } finally {
    await c.close();
    actor.close();
  }
});

test("a replay nobody answers takes what is left of next(), not a whole call; catchUp(t) the same", async () => {
  // The client's calls may take a minute; a next() of a second that meets a gap gives the
  // replay what is left of its second (at least one attempt), then reports the gap lost.
  const actor = await FakeActor.bind(scratch());
  actor.serve(() => null); // no replay is answered
  const c = new Client({ runtimeDir: actor.dir, learnOps: false, timeout: 60, attemptTimeout: 0.5 });
  try {
    const sub = c.subscribe("alpha", ["t"]);
    await actor.pub.receive();
    await actor.pub.send(encodeStream("t", 1, A, { n: 1 }));
    assert.deepEqual(await within(sub.next(20), 10, "message 1"), message(1));
    await actor.pub.send(encodeStream("t", 3, A, { n: 3 }));
    const got: StreamEvent[] = [];
    // (one page's wait, not the call's 60 s: the bound is a third of it; a few rounds of
    // next(1) at most, so that the loop ends once a failed wait closed the subscription)
    await within((async () => {
      for (let round = 0; got.length < 2 && round < 20; round++) {
        const ev = await sub.next(1);
        if (ev !== null) got.push(ev);
      }
    })(), 20, "the loss and message 3");
    assert.deepEqual(got, [loss(2, 2), message(3)]);
    const asked = actor.requests.length;
    assert.ok(asked >= 1 && actor.requests.every((r) => (r.args as { from_seq: number }).from_seq === 2),
      JSON.stringify(actor.requests.map((r) => r.args)));
    // A catch-up given a second: its replay (of 4 on, nobody answers) ends within it too.
    await within(sub.catchUp(1), 20, "catchUp(1)");
    assert.ok(actor.requests.length > asked && actor.requests.slice(asked).every((r) => (r.args as { from_seq: number }).from_seq === 4),
      JSON.stringify(actor.requests.map((r) => r.args)));
  } finally {
    await c.close();
    actor.close();
  }
});

// --- the tracker alone ------------------------------------------------------------------------

function msg(seq: number) {
  return { topic: "t", seq, epoch: A, body: { n: seq }, attachments: [], welcome: false };
}

function events(step: [StreamEvent[], unknown]): StreamEvent[] {
  return step[0];
}

test("an answer with lost out of order, or claiming attachments that did not come, is a failed replay", () => {
  for (const answer of [{ ...replayAnswer([]), lost: [4, 2] }, { ...replayAnswer([]), messages: [[1, { n: 1 }, 1]] }]) {
    const t = new StreamTracker(1, ["t"]);
    assert.deepEqual(t.onMessage(msg(5)), [[], { topic: "t", fromSeq: 1 }]);
    assert.deepEqual(t.onReplay("t", answer as never, []), [[loss(1, 4), message(5)], null], JSON.stringify(answer));
  }
  // (the attachments a message claims, when they came, are its own)
  const t = new StreamTracker(1, ["t"]);
  t.onMessage(msg(2));
  const bytes = new Uint8Array([7]);
  const [got, need] = t.onReplay("t", { ...replayAnswer([]), messages: [[1, { n: 1 }, 1]] } as never, [bytes]);
  assert.deepEqual([got, need], [[{ ...message(1), attachments: [bytes] }, message(2)], null]);
});

test("a failed replay returns the replay a later held gap needs; a caller that gives up gets every held gap as lost", () => {
  const held = (): StreamTracker => {
    const t = new StreamTracker(null, [""]);
    t.onMessage(msg(1));
    assert.deepEqual(t.catchUp(), [{ topic: "t", fromSeq: 2 }]);
    for (const seq of [5, 6, 9]) assert.deepEqual(t.onMessage(msg(seq)), [[], null]); // (7 and 8 dropped)
    return t;
  };
  let t = held();
  assert.deepEqual(t.replayFailed("t"), [[loss(2, 4), message(5), message(6)], { topic: "t", fromSeq: 7 }]);
  assert.deepEqual(t.onReplay("t", replayAnswer([7, 8]), []), [[message(7), message(8), message(9)], null]);
  assert.deepEqual(events(t.onMessage(msg(10))), [message(10)]);

  t = held();
  assert.deepEqual(t.onReplayFailed("t"), [loss(2, 4), message(5), message(6), loss(7, 8), message(9)]);
  assert.equal(t.replaying.size, 0);
  assert.deepEqual(events(t.onMessage(msg(10))), [message(10)]);
});

test("a gap after a failed replay gets its one honest empty answer again", () => {
  const t = new StreamTracker(null, [""]);
  t.onMessage(msg(1));
  t.catchUp();
  t.onMessage(msg(4)); // read while the catch-up's replay was out
  assert.deepEqual(t.onReplay("t", replayAnswer([]), [])[1], { topic: "t", fromSeq: 2 }); // (4 shows the gap)
  assert.deepEqual(t.replayFailed("t"), [[loss(2, 3), message(4)], null]); // that one failed
  t.catchUp();
  t.onMessage(msg(7));
  const [got, need] = t.onReplay("t", replayAnswer([]), []);
  assert.deepEqual([got.filter((e) => e.kind === "loss"), need], [[], { topic: "t", fromSeq: 5 }]);
});
