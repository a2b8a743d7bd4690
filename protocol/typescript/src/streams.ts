/**
 * Stream bookkeeping (PROTOCOL.md section 12), pure: order, gaps, welcomes, replay, loss,
 * resets, and the byte-offset rule of `term.out.*`. The subscription feeds it messages and
 * replay answers; it answers with events to deliver and the replay to ask for next. A port of
 * the Python client's tracker, held to the same scenarios (protocol/vectors/client.json).
 *
 * Terminal output (`term.out.<session>`) is also de-duplicated by byte offset, across epochs. A
 * message whose offset is past the next byte not yet delivered (bytes no seq told missing: the
 * tail of a publisher's life, dropped before it died) comes after a `ByteGap`, which the
 * subscription fills from the terminal's scrollback (`GapFill`: the bytes as messages, what is
 * no longer held as `BytesLost`).
 */
import type { StreamMessage } from "./envelope.js";
import { MAX_ID } from "./limits.js";
import type { Value } from "./msgpack.js";

/** Messages `first`..`last` of `topic` were published but can no longer be had. */
export interface Loss {
  kind: "loss";
  topic: string;
  first: number;
  last: number;
  epoch: string;
}

/** The publisher restarted: `topic` continues in `newEpoch` from seq 1. */
export interface Reset {
  kind: "reset";
  topic: string;
  oldEpoch: string;
  newEpoch: string;
}

/** Bytes [`fromOffset`, `toOffset`) of the terminal output `topic` were never delivered and
 * can no longer be had (the terminal's scrollback no longer held them, or could not be asked). */
export interface BytesLost {
  kind: "bytes_lost";
  topic: string;
  fromOffset: number;
  toOffset: number;
}

/** Bytes [`fromOffset`, `toOffset`) of `topic` were skipped by the message that follows (of
 * `epoch` and `seq`): a subscription replaces this with what `GapFill` gets, and never delivers
 * it as is. */
export interface ByteGap {
  kind: "byte_gap";
  topic: string;
  fromOffset: number;
  toOffset: number;
  epoch: string;
  seq: number;
}

export interface Message extends StreamMessage {
  kind: "message";
}

/** What a subscription delivers. */
export type SubscriptionEvent = Message | Loss | Reset | BytesLost;

/** What the tracker returns: a subscription's events, and the gaps in terminal output it has
 * to fill before the message after each. */
export type StreamEvent = SubscriptionEvent | ByteGap;

export interface NeedReplay {
  topic: string;
  fromSeq: number;
}

/** Topics whose messages carry `{offset}` and bytes as attachment 0: de-duplicated by offset. */
export const OFFSET_TOPIC_PREFIX = "term.out.";
/** A recreated session's output starts at a multiple of this (PROTOCOL.md section 12): a jump of
 * the offset there is a new shell, not a gap. */
export const NEW_SHELL_OFFSET = 2 ** 40;
/** What one `term.scrollback` asked by a `GapFill` returns at most (the op's own default). */
export const FILL_PAGE = 1 << 20;

interface TopicState {
  epoch: string | null;
  last: number;
  superseded: Set<string>;
  successor: string | null;
  /** The last replay page moved `last` on by nothing (the publisher had nothing new, or a held
   * message came after it): one more such page for this gap is a failed replay. */
  stalled: boolean;
}

type Step = [StreamEvent[], NeedReplay | null];

export interface ReplayAnswer {
  epoch?: string;
  first_seq?: number;
  last_seq?: number;
  messages?: [number, Value, number][];
  lost?: [number, number] | null;
  more?: boolean;
}

/** A `replay` answer as section 12 has it: a map whose `epoch` is a string, `lost` nil or an
 * ordered `[first, last]`, `messages` `[seq, body, n_attachments]` triples claiming no more
 * attachments than came (`nAttachments`), and `more` a boolean, every integer in [0, 2^53). Any
 * other is no answer to go on (a message would be delivered without its bytes): the replay
 * failed. */
function wellFormed(answer: unknown, nAttachments: number): boolean {
  if (answer === null || typeof answer !== "object" || Array.isArray(answer) || answer instanceof Uint8Array) return false;
  const a = answer as Record<string, unknown>;
  const int = (v: unknown): boolean => typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= MAX_ID;
  const absentOr = (v: unknown, ok: (v: unknown) => boolean): boolean => v === undefined || v === null || ok(v);
  const triple = (m: unknown): m is [number, Value, number] => Array.isArray(m) && m.length === 3 && int(m[0]) && int(m[2]);
  const shaped = absentOr(a.epoch, (v) => typeof v === "string")
    && absentOr(a.lost, (v) => Array.isArray(v) && v.length === 2 && v.every(int) && v[0] <= v[1])
    && absentOr(a.messages, (v) => Array.isArray(v) && v.every(triple))
    && absentOr(a.more, (v) => typeof v === "boolean");
  if (!shaped) return false;
  const messages = (a.messages ?? []) as [number, Value, number][];
  return messages.reduce((claimed, m) => claimed + m[2], 0) <= nAttachments;
}

function asMessage(m: StreamMessage): Message {
  return { kind: "message", topic: m.topic, seq: m.seq, epoch: m.epoch, body: m.body, attachments: m.attachments, welcome: m.welcome };
}

export class StreamTracker {
  readonly prefixes: ReadonlySet<string>;
  readonly live = new Set<string>();
  readonly topics = new Map<string, TopicState>();
  readonly replaying = new Set<string>();
  readonly held = new Map<string, StreamMessage[]>();
  readonly nextOffset = new Map<string, number>();
  /** Replays asked for (gaps, welcomes past what was seen): a subscription's record. */
  replaysAsked = 0;
  /** `term.out.*`: ByteGaps given (bytes skipped that no seq told). */
  byteGaps = 0;

  /** `fromSeq`: a new topic's start (1: all that is retained); `prefixes`: the subscribed ones. */
  constructor(
    readonly fromSeq: number | null = null,
    prefixes: readonly string[] | null = null,
  ) {
    this.prefixes = new Set(prefixes ?? []);
  }

  onMessage(msg: StreamMessage): Step {
    const [events, need] = this.message(msg);
    if (need) this.replaysAsked += 1;
    return [this.dedup(events), need];
  }

  /** Feed the `replay` op's answer: events, and maybe the next page to ask for. An answer this
   * tracker cannot follow (not of the op's shape, or a page that does not move the topic on)
   * is a failed replay: the gap is reported lost. */
  onReplay(topic: string, answer: ReplayAnswer, attachments: Uint8Array[]): Step {
    const [events, need] = this.replay(topic, answer, attachments);
    if (need) this.replaysAsked += 1;
    return [this.dedup(events), need];
  }

  /** The replay call failed: the gap is reported lost and the held messages go on; a later gap
   * among them returns the replay it needs. */
  replayFailed(topic: string): Step {
    const [events, need] = this.failReplay(topic);
    if (need) this.replaysAsked += 1;
    return [this.dedup(events), need];
  }

  /** As `replayFailed`, for a caller that asks no further replay (it gives up, or cannot): a
   * later gap among the held messages is reported lost too, so the topic is never left waiting
   * for a replay nobody sends. */
  onReplayFailed(topic: string): StreamEvent[] {
    let [events, need] = this.failReplay(topic);
    while (need !== null) {
      const [more, next] = this.failReplay(need.topic);
      events = [...events, ...more];
      need = next;
    }
    return this.dedup(events);
  }

  private isLive(topic: string): boolean {
    for (const p of this.live) if (topic.startsWith(p)) return true;
    return false;
  }

  private message(msg: StreamMessage): Step {
    if (msg.welcome) {
      const out = this.welcome(msg);
      if (this.prefixes.has(msg.topic)) this.live.add(msg.topic);
      return out;
    }
    if (this.replaying.has(msg.topic)) {
      this.held.get(msg.topic)!.push(msg);
      return [[], null];
    }
    const st = this.topics.get(msg.topic);
    const out: StreamEvent[] = [];
    if (st === undefined) {
      const start = this.isLive(msg.topic) ? 1 : this.fromSeq;
      if (start !== null && msg.seq > start) {
        this.topics.set(msg.topic, this.state(msg.epoch, start - 1));
        return this.ask(msg);
      }
      this.topics.set(msg.topic, this.state(msg.epoch, msg.seq));
      return [[asMessage(msg)], null];
    }
    if (!this.adoptEpoch(st, msg, out)) return [[], null];
    if (msg.seq <= st.last) return [out, null];
    if (msg.seq === st.last + 1) {
      st.last = msg.seq;
      out.push(asMessage(msg));
      return [out, null];
    }
    if (st.successor !== null) {
      out.push({ kind: "loss", topic: msg.topic, first: st.last + 1, last: msg.seq - 1, epoch: msg.epoch }, asMessage(msg));
      st.last = msg.seq;
      return [out, null];
    }
    const [events, need] = this.ask(msg);
    return [[...out, ...events], need];
  }

  private state(epoch: string | null, last: number): TopicState {
    return { epoch, last, superseded: new Set(), successor: null, stalled: false };
  }

  private welcome(msg: StreamMessage): Step {
    if (this.replaying.has(msg.topic)) return [[], null];
    let st = this.topics.get(msg.topic);
    if (st === undefined) {
      let start: number;
      if (this.isLive(msg.topic)) start = 1;
      else if (this.fromSeq !== null) start = this.fromSeq;
      else {
        this.topics.set(msg.topic, this.state(msg.epoch, msg.seq)); // "from now": starts here
        return [[], null];
      }
      st = this.state(msg.epoch, Math.max(start - 1, 0));
      this.topics.set(msg.topic, st);
      if (msg.seq < start) return [[], null];
    }
    const out: StreamEvent[] = [];
    if (!this.adoptEpoch(st, msg, out)) return [[], null];
    if (msg.seq <= st.last) return [out, null];
    this.replaying.add(msg.topic);
    this.held.set(msg.topic, []);
    return [out, { topic: msg.topic, fromSeq: st.last + 1 }];
  }

  private adoptEpoch(st: TopicState, msg: StreamMessage, out: StreamEvent[]): boolean {
    if (st.superseded.has(msg.epoch)) return false;
    if (st.epoch === null) st.epoch = msg.epoch;
    else if (msg.epoch !== st.epoch) {
      out.push({ kind: "reset", topic: msg.topic, oldEpoch: st.epoch, newEpoch: msg.epoch });
      st.superseded.add(st.epoch);
      st.epoch = msg.epoch;
      st.last = 0;
      st.successor = null;
    }
    return true;
  }

  private ask(msg: StreamMessage): Step {
    const st = this.topics.get(msg.topic)!;
    this.replaying.add(msg.topic);
    this.held.set(msg.topic, [msg]);
    return [[], { topic: msg.topic, fromSeq: st.last + 1 }];
  }

  private replay(topic: string, answer: ReplayAnswer, attachments: Uint8Array[]): Step {
    if (!wellFormed(answer, attachments.length)) return this.failReplay(topic);
    const st = this.topics.get(topic)!;
    const out: StreamEvent[] = [];
    const epoch = typeof answer.epoch === "string" ? answer.epoch : (st.epoch ?? "");
    if (st.epoch === null) st.epoch = epoch;
    else if (epoch !== st.epoch) {
      st.successor = epoch;
      return this.failReplay(topic);
    }
    const before = st.last;
    const lost = answer.lost;
    if (lost && lost[1] > st.last) {
      out.push({ kind: "loss", topic, first: Math.max(lost[0], st.last + 1), last: lost[1], epoch });
      st.last = lost[1];
    }
    let i = 0;
    for (const [seq, body, n] of answer.messages ?? []) {
      const atts = attachments.slice(i, i + n);
      i += n;
      if (seq === st.last + 1) {
        st.last = seq;
        out.push({ kind: "message", topic, seq, epoch, body, attachments: atts, welcome: false });
      }
    }
    const more = answer.more === true;
    if (st.last === before && (more || st.stalled)) {
      // A page cut with nothing in it, or a second answer in a row that leaves the gap where
      // it was: asking again would loop for as long as the publisher answers so. (One answer
      // with nothing new is honest when the held message that still shows a gap was published
      // after it: that one is asked again.)
      st.stalled = false;
      return this.failReplay(topic);
    }
    if (more) {
      st.stalled = false;
      return [out, { topic, fromSeq: st.last + 1 }];
    }
    st.stalled = st.last === before;
    this.replaying.delete(topic);
    const [events, need] = this.deliverHeld(topic);
    if (need === null) st.stalled = false;
    return [[...out, ...events], need];
  }

  private failReplay(topic: string): Step {
    const st = this.topics.get(topic)!;
    st.stalled = false; // (a later gap's replay starts afresh)
    const held = this.held.get(topic) ?? [];
    this.replaying.delete(topic);
    const out: StreamEvent[] = [];
    if (held.length > 0) {
      const first = held.reduce((a, b) => (b.seq < a.seq ? b : a));
      if (first.epoch === st.epoch && first.seq > st.last + 1) {
        out.push({ kind: "loss", topic, first: st.last + 1, last: first.seq - 1, epoch: st.epoch ?? "" });
        st.last = first.seq - 1;
      }
    }
    const [events, need] = this.deliverHeld(topic);
    return [[...out, ...events], need];
  }

  /** The messages held during a replay, in seq order, as if they came now; one that shows a gap
   * holds itself and the rest again, and returns the replay it needs. */
  private deliverHeld(topic: string): Step {
    const held = (this.held.get(topic) ?? []).sort((a, b) => a.seq - b.seq);
    this.held.delete(topic);
    const out: StreamEvent[] = [];
    for (let k = 0; k < held.length; k++) {
      const [events, need] = this.message(held[k]);
      out.push(...events);
      if (need !== null) {
        this.held.get(topic)!.push(...held.slice(k + 1));
        return [out, need];
      }
    }
    return [out, null];
  }

  /** Replays that would reveal a lost tail (section 12, "Tail loss"): for every topic seen and
   * not being replayed already, from the seq after the last delivered. */
  catchUp(): NeedReplay[] {
    const needs: NeedReplay[] = [];
    for (const [topic, st] of this.topics) {
      if (this.replaying.has(topic) || st.epoch === null || st.successor !== null) continue;
      this.replaying.add(topic);
      if (!this.held.has(topic)) this.held.set(topic, []);
      needs.push({ topic, fromSeq: st.last + 1 });
    }
    this.replaysAsked += needs.length;
    return needs;
  }

  /** `term.out.*`: drop bytes already delivered, trim a message straddling the next offset, put
   * a `ByteGap` before one past it (PROTOCOL.md section 12, "Byte streams"). */
  private dedup(events: StreamEvent[]): StreamEvent[] {
    const out: StreamEvent[] = [];
    for (const ev of events) {
      if (ev.kind !== "message" || !ev.topic.startsWith(OFFSET_TOPIC_PREFIX) || ev.attachments.length === 0) {
        out.push(ev);
        continue;
      }
      const body = ev.body as Record<string, Value> | null;
      const off = body !== null && typeof body === "object" && !Array.isArray(body) ? body.offset : undefined;
      if (typeof off !== "number" || !Number.isInteger(off)) {
        out.push(ev);
        continue;
      }
      const data = ev.attachments[0];
      const end = off + data.length;
      const expected = this.nextOffset.get(ev.topic);
      if (expected !== undefined && off > expected && off % NEW_SHELL_OFFSET !== 0) {
        out.push({ kind: "byte_gap", topic: ev.topic, fromOffset: expected, toOffset: off, epoch: ev.epoch, seq: ev.seq }, ev);
        this.byteGaps += 1;
      } else if (expected !== undefined && off < expected) {
        if (end <= expected) continue;
        const cut = expected - off;
        out.push({ ...ev, body: { ...body, offset: expected }, attachments: [data.subarray(cut), ...ev.attachments.slice(1)] });
      } else {
        out.push(ev);
      }
      this.nextOffset.set(ev.topic, Math.max(end, expected ?? 0));
    }
    return out;
  }
}

/** The bytes of a `ByteGap`, asked of the terminal (`term.scrollback`, a page at a time) by a
 * subscription, which does the I/O: `ask()` gives the next request's args (null: done), `take()`
 * its answer, `failed()` a request that failed (or what ended the fill early). `events`: the
 * bytes as `term.out` messages of the gap's epoch and seq (`replay: true`, as a successor's
 * republished ones), and a `BytesLost` for what the scrollback no longer held or could not be
 * had, in offset order: together they cover the gap exactly once. */
export class GapFill {
  readonly events: (Message | BytesLost)[] = [];
  /** The first byte of the gap neither delivered nor reported lost. */
  at: number;

  constructor(readonly gap: ByteGap) {
    this.at = gap.fromOffset;
  }

  ask(): { session: string; from_offset: number; max_bytes: number } | null {
    if (this.at >= this.gap.toOffset) return null;
    return { session: this.gap.topic.slice(OFFSET_TOPIC_PREFIX.length), from_offset: this.at,
      max_bytes: Math.min(FILL_PAGE, this.gap.toOffset - this.at) };
  }

  take(answer: unknown, attachments: readonly Uint8Array[]): void {
    const g = this.gap;
    const at = this.at;
    const a = answer !== null && typeof answer === "object" && !Array.isArray(answer) && !(answer instanceof Uint8Array)
      ? (answer as Record<string, unknown>) : {};
    const frm = a.from;
    const to = a.to;
    if (!(typeof frm === "number" && Number.isInteger(frm) && typeof to === "number" && Number.isInteger(to)
      && at <= frm && frm <= to && attachments.length > 0 && attachments[0].length === to - frm)) {
      this.failed(); // (not the op's answer: what is left is not to be had from it)
      return;
    }
    if (frm > at) this.lost(Math.min(frm, g.toOffset)); // (no longer held: its `lost`)
    if (to > this.at && this.at < g.toOffset) {
      const data = attachments[0].subarray(0, g.toOffset - this.at);
      this.events.push({ kind: "message", topic: g.topic, seq: g.seq, epoch: g.epoch,
        body: { offset: this.at, replay: true }, attachments: [data], welcome: false });
      this.at += data.length;
    } else if (frm === at) {
      this.failed(); // (nothing: the session's end is before the gap's)
    }
  }

  failed(): void {
    this.lost(this.gap.toOffset);
  }

  private lost(upto: number): void {
    if (upto > this.at) {
      this.events.push({ kind: "bytes_lost", topic: this.gap.topic, fromOffset: this.at, toOffset: upto });
      this.at = upto;
    }
  }
}
