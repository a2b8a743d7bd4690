/**
 * Terminal output skipped with no seq to say so (PROTOCOL.md section 12, "A gap in the bytes"):
 * the tracker puts a ByteGap before the message past the next byte, and the subscription fills
 * it from the terminal's scrollback, reporting what that no longer holds, or could not give, as
 * `bytes_lost`. The tracker and GapFill alone, then a subscription against a fake actor over
 * real sockets (test/fake_actor.ts).
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { Client, type Subscription } from "../src/client.js";
import { type Request, type StreamMessage, encodeError, encodeReply, encodeStream } from "../src/envelope.js";
import { wireError } from "../src/errors.js";
import type { Value } from "../src/msgpack.js";
import { type ByteGap, FILL_PAGE, GapFill, type StreamEvent, StreamTracker, type SubscriptionEvent } from "../src/streams.js";
import { FakeActor, scratch, until, within } from "./fake_actor.js";

const A = "aaaaaaaaaaaaaaaa";
const B = "bbbbbbbbbbbbbbbb";
const TOPIC = "term.out.s1";
/** (a Buffer: what the sockets give, and so what a delivered message's bytes are) */
const bytes = (s: string): Uint8Array => Buffer.from(s);

function out(seq: number, offset: number, data: string, epoch = A, replay = false): StreamMessage {
  const body: Value = replay ? { offset, replay: true } : { offset };
  return { topic: TOPIC, seq, epoch, body, attachments: [bytes(data)], welcome: false };
}

function message(seq: number, offset: number, data: string, epoch = A, replay = false) {
  return { kind: "message", ...out(seq, offset, data, epoch, replay) };
}

function lost(fromOffset: number, toOffset: number) {
  return { kind: "bytes_lost", topic: TOPIC, fromOffset, toOffset };
}

function gap(fromOffset: number, toOffset: number, epoch: string, seq: number): ByteGap {
  return { kind: "byte_gap", topic: TOPIC, fromOffset, toOffset, epoch, seq };
}

const events = (step: [StreamEvent[], unknown]): StreamEvent[] => step[0];

// --- the tracker and GapFill alone --------------------------------------------------------------

test("bytes skipped across a reset come after a byte gap; a new shell's offset is none; a republished overlap is still trimmed", () => {
  const t = new StreamTracker();
  assert.deepEqual(events(t.onMessage(out(1, 0, "abc"))), [message(1, 0, "abc")]);
  // The old life's tail (offsets 3..9) was dropped before it died: no seq says so.
  assert.deepEqual(events(t.onMessage(out(1, 10, "xyz", B))),
    [{ kind: "reset", topic: TOPIC, oldEpoch: A, newEpoch: B }, gap(3, 10, B, 1), message(1, 10, "xyz", B)]);
  assert.equal(t.byteGaps, 1);
  // A recreated session's shell starts at a multiple of 2^40: a new stream, not a gap.
  assert.deepEqual(events(t.onMessage(out(2, 2 ** 40, "new", B))), [message(2, 2 ** 40, "new", B)]);
  // Bytes republished after a gap are still dropped by offset.
  assert.deepEqual(events(t.onMessage(out(3, 2 ** 40 + 1, "ew!", B))), [message(3, 2 ** 40 + 3, "!", B)]);
  assert.equal(t.byteGaps, 1);
});

/** A `term.scrollback` answer of `data` from `from` (`lost` as the op gives it, when given). */
function scrollback(from: number, data: string, lostRange?: [number, number]): [Record<string, unknown>, Uint8Array[]] {
  const body: Record<string, unknown> = { session: "s1", from, to: from + data.length, first: from, end: 99 };
  if (lostRange !== undefined) body.lost = lostRange;
  return [body, [bytes(data)]];
}

test("a gap is filled from the scrollback, and what it no longer holds is lost", () => {
  const fill = new GapFill(gap(3, 10, B, 1));
  assert.deepEqual(fill.ask(), { session: "s1", from_offset: 3, max_bytes: 7 });
  fill.take(...scrollback(5, "fghij", [3, 5]));
  assert.equal(fill.ask(), null);
  assert.deepEqual(fill.events, [lost(3, 5), message(1, 5, "fghij", B, true)]);
});

test("a gap filled in pages; a failed, malformed or empty answer reports the rest lost", () => {
  const fill = new GapFill(gap(0, 3 * FILL_PAGE, A, 7));
  fill.take(...scrollback(0, "a".repeat(FILL_PAGE)));
  assert.deepEqual(fill.ask(), { session: "s1", from_offset: FILL_PAGE, max_bytes: FILL_PAGE });
  fill.take({ from: FILL_PAGE, to: FILL_PAGE + 5 }, [bytes("abc")]); // says 5, carries 3
  assert.equal(fill.ask(), null);
  assert.equal(fill.events.length, 2);
  assert.deepEqual(fill.events[1], lost(FILL_PAGE, 3 * FILL_PAGE));

  const failed = new GapFill(gap(4, 6, A, 2));
  failed.failed();
  assert.deepEqual(failed.events, [lost(4, 6)]);
  assert.equal(failed.ask(), null);

  for (const answer of [null, "s1", { from: "4", to: 6 }, { from: 3, to: 5 }, { from: 6, to: 4 }]) {
    const bad = new GapFill(gap(4, 6, A, 2));
    bad.take(answer, [bytes("ab")]);
    assert.deepEqual([bad.events, bad.ask()], [[lost(4, 6)], null], JSON.stringify(answer));
  }
  const noBytes = new GapFill(gap(4, 6, A, 2));
  noBytes.take({ from: 4, to: 6 }, []);
  assert.deepEqual(noBytes.events, [lost(4, 6)]);

  // A session whose end is before the gap's answers no bytes: lost, not asked for ever.
  const short = new GapFill(gap(4, 6, A, 2));
  short.take(...scrollback(4, ""));
  assert.deepEqual([short.events, short.ask()], [[lost(4, 6)], null]);
});

test("a page is cut at the gap's end, and one that starts past it is all lost, with no empty message", () => {
  const cut = new GapFill(gap(4, 6, A, 2));
  cut.take(...scrollback(4, "abcd"));
  assert.deepEqual([cut.events, cut.ask()], [[message(2, 4, "ab", A, true)], null]);
  const past = new GapFill(gap(4, 6, A, 2));
  past.take(...scrollback(8, "xy", [4, 8]));
  assert.deepEqual([past.events, past.ask()], [[lost(4, 6)], null]);
});

// --- a subscription against a fake actor --------------------------------------------------------

/** A subscription to term.out.s1 of a fake actor that answers each request `reply(req)` (null:
 * not at all; no `reply`: the test takes the requests itself): it published "abc" at offset 0 (epoch A), then its successor (epoch B) "xyz" at
 * offset 10, the bytes 3..9 never reaching us. Given after the first message and the Reset. */
async function pastTheGap(actor: FakeActor, c: Client, reply: ((req: Request) => Uint8Array[] | null) | null): Promise<Subscription> {
  if (reply !== null) actor.serve(reply);
  const sub = c.subscribe("alpha", [TOPIC]);
  await actor.pub.receive(); // the subscription reached the publisher
  await actor.pub.send(encodeStream(TOPIC, 1, A, { offset: 0 }, [bytes("abc")]));
  await actor.pub.send(encodeStream(TOPIC, 1, B, { offset: 10 }, [bytes("xyz")]));
  assert.deepEqual(await within(sub.next(20), 10, "abc"), message(1, 0, "abc"));
  assert.deepEqual(await within(sub.next(20), 10, "the reset"), { kind: "reset", topic: TOPIC, oldEpoch: A, newEpoch: B });
  return sub;
}

const SCROLLBACK = { session: "s1", from: 5, to: 10, first: 5, end: 13, lost: [3, 5] };

function scrollbackAnswer(req: Request): Uint8Array[] | null {
  return req.op === "term.scrollback" ? encodeReply(req.id, B, SCROLLBACK, [bytes("fghij")]) : null;
}

/** `sub`'s next events are `expected`, in order. */
async function gives(sub: Subscription, expected: unknown[]): Promise<void> {
  for (const [i, ev] of expected.entries()) assert.deepEqual(await within(sub.next(20), 10, `event ${i}`), ev, `event ${i}`);
}

test("a gap in a terminal's output is filled from its scrollback, what it no longer holds told lost", async () => {
  const actor = await FakeActor.bind(scratch());
  const c = new Client({ runtimeDir: actor.dir, learnOps: false });
  try {
    const sub = await pastTheGap(actor, c, scrollbackAnswer);
    await gives(sub, [lost(3, 5), message(1, 5, "fghij", B, true), message(1, 10, "xyz", B)]);
    assert.deepEqual(actor.requests.map((r) => [r.op, r.args]), [["term.scrollback", { session: "s1", from_offset: 3, max_bytes: 7 }]]);
    assert.equal(sub.tracker.byteGaps, 1);
    await actor.pub.send(encodeStream(TOPIC, 2, B, { offset: 13 }, [bytes("!")]));
    assert.deepEqual(await within(sub.next(20), 10, "the next message"), message(2, 13, "!", B));
  } finally {
    await c.close();
    actor.close();
  }
});

test("a failed scrollback reports the whole gap lost, then the message", async () => {
  const actor = await FakeActor.bind(scratch());
  const c = new Client({ runtimeDir: actor.dir, learnOps: false });
  try {
    const sub = await pastTheGap(actor, c, (req) => encodeError(req.id, B, wireError("session_not_found", "no session s1")));
    await gives(sub, [lost(3, 10), message(1, 10, "xyz", B)]);
    assert.deepEqual(actor.requests.map((r) => r.op), ["term.scrollback"]);
  } finally {
    await c.close();
    actor.close();
  }
});

test("next() calls waiting together get the gap's bytes before what follows it, from one ask", async () => {
  const actor = await FakeActor.bind(scratch());
  const c = new Client({ runtimeDir: actor.dir, learnOps: false });
  try {
    const sub = await pastTheGap(actor, c, null);
    const calls = [sub.next(20), sub.next(20), sub.next(20)];
    const [rid, req] = await within(actor.take(), 10, "the scrollback asked");
    await actor.rpc.send([rid, ...scrollbackAnswer(req)!]);
    actor.serve(scrollbackAnswer); // (any other ask, answered and so counted below)
    assert.deepEqual(await within(Promise.all(calls), 10, "the three events"),
      [lost(3, 5), message(1, 5, "fghij", B, true), message(1, 10, "xyz", B)]);
    assert.equal(actor.requests.length, 1);
  } finally {
    await c.close();
    actor.close();
  }
});

test("a scrollback nobody answers takes what is left of next(), then the gap is reported lost", async () => {
  // The client's calls may take a minute; a next() of a second that meets a gap gives the
  // fill what is left of its second (at least one attempt), as a replay does.
  const actor = await FakeActor.bind(scratch());
  const c = new Client({ runtimeDir: actor.dir, learnOps: false, timeout: 60, attemptTimeout: 0.5 });
  try {
    const sub = await pastTheGap(actor, c, () => null);
    const got: SubscriptionEvent[] = [];
    await within((async () => {
      for (let round = 0; got.length < 2 && round < 20; round++) {
        const ev = await sub.next(1);
        if (ev !== null) got.push(ev);
      }
    })(), 20, "the loss and the message");
    assert.deepEqual(got, [lost(3, 10), message(1, 10, "xyz", B)]);
    assert.ok(actor.requests.length >= 1 && actor.requests.every((r) => r.op === "term.scrollback"),
      JSON.stringify(actor.requests.map((r) => [r.op, r.args])));
  } finally {
    await c.close();
    actor.close();
  }
});

test("a client closed while a gap is being filled ends the next() filling it", async () => {
  const actor = await FakeActor.bind(scratch());
  const c = new Client({ runtimeDir: actor.dir, learnOps: false });
  try {
    const sub = await pastTheGap(actor, c, () => null);
    const filling = sub.next();
    await until(() => actor.requests.length === 1, 10, "the scrollback asked");
    await c.close();
    assert.equal(await within(filling, 10, "the next() filling the gap"), null);
    assert.equal(await sub.next(0), null);
  } finally {
    await c.close();
    actor.close();
  }
});
