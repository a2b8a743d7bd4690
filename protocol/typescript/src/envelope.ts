/**
 * Frames on the wire (PROTOCOL.md sections 3-5 and 15), pure: no sockets, so the conformance
 * vectors check it byte for byte.
 *
 *   request  [MOOR1] [header {id, sid, op, deadline_ms?, ep?}] [args]       [attachment]*
 *   reply    [MOOR1] [header {id, ok, ep}]                [result | error]  [attachment]*
 *   stream   [topic] [MOOR1] [header {seq, ep, welcome?}] [body]            [attachment]*
 */
import { DecodeError, type WireError, toWire, wireError } from "./errors.js";
import * as limits from "./limits.js";
import { CodecError, Float64, type Value, decode, encode } from "./msgpack.js";

export const TAG = new Uint8Array([0x4d, 0x4f, 0x4f, 0x52, 0x31]); // "MOOR1"
export const PROTO_VERSION = 1;
const NIL = new Uint8Array([0xc0]);

export interface Request {
  id: number;
  sid: string;
  op: string;
  deadlineMs: number | null;
  args: Value;
  attachments: Uint8Array[];
  /** The header's `ep`: run only in this actor life (a pinned resend, section 10); null when absent. */
  epoch: string | null;
}

export interface Reply {
  id: number | null;
  ok: boolean;
  epoch: string;
  body: Value;
  attachments: Uint8Array[];
}

export interface StreamMessage {
  topic: string;
  seq: number;
  epoch: string;
  body: Value;
  attachments: Uint8Array[];
  /** A welcome is no message of the stream (section 12). */
  welcome: boolean;
}

function fail(name: string, message: string, id: number | null = null): DecodeError {
  return new DecodeError(wireError(name, message), id);
}

function isTag(f: Uint8Array): boolean {
  return f.length === 5 && f[0] === 0x4d && f[1] === 0x4f && f[2] === 0x4f && f[3] === 0x52 && f[4] === 0x31;
}

function header(frame: Uint8Array): Record<string, Value | undefined> {
  if (frame.length > limits.MAX_HEADER_SIZE) throw fail("message_too_large", `header ${frame.length} bytes`);
  let h: Value;
  try {
    h = decode(frame, { wrapFloats: true });
  } catch (e) {
    throw fail("bad_request", `undecodable header: ${(e as Error).message}`);
  }
  if (typeof h !== "object" || h === null || Array.isArray(h) || h instanceof Uint8Array || h instanceof Float64) {
    throw fail("bad_request", "header is not a map");
  }
  return h;
}

/** Decode a body under the protocol's limits; a CodecError becomes bad_request. */
export function decodeBody(frame: Uint8Array, maxLen: number, id: number | null = null): Value {
  if (frame.length > maxLen) throw fail("message_too_large", `${frame.length} bytes > ${maxLen}`, id);
  if (frame.length === 1 && frame[0] === 0xc0) return null;
  try {
    return decode(frame);
  } catch (e) {
    if (e instanceof CodecError) throw fail("bad_request", `undecodable msgpack: ${e.message}`, id);
    throw e;
  }
}

function isId(v: Value | undefined): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= limits.MAX_ID;
}

function codePoints(s: string): number {
  let n = 0;
  for (const _ of s) n += 1;
  return n;
}

// A request header is a map whose entries after the id do not change between a client's calls
// of one op (sid, op, the deadline's key): packed once, and only the id and deadline each time.
// Byte for byte what encoding the map gives (the vectors check it). Bounded: op names are the
// caller's text.
const HEAD_3 = Uint8Array.from([0x83, 0xa2, 0x69, 0x64]); // map of 3, "id"
const HEAD_4 = Uint8Array.from([0x84, 0xa2, 0x69, 0x64]); // map of 4, "id"
const tails = new Map<string, Uint8Array>();

function tail(sid: string, op: string, withDeadline: boolean): Uint8Array {
  const key = `${withDeadline ? 1 : 0}${sid}\u0000${op}`;
  let t = tails.get(key);
  if (t === undefined) {
    const sidOp = encode({ sid, op }).subarray(1);
    const dl = withDeadline ? encode("deadline_ms") : new Uint8Array(0);
    t = new Uint8Array(sidOp.length + dl.length);
    t.set(sidOp);
    t.set(dl, sidOp.length);
    if (tails.size >= 1024) tails.clear();
    tails.set(key, t);
  }
  return t;
}

/** The smallest msgpack encoding of an int in [0, 2^53): ids and deadlines, per call. */
function uint(n: number): Uint8Array {
  if (n < 0 || !Number.isSafeInteger(n)) return encode(n);
  if (n < 0x80) return Uint8Array.of(n);
  if (n < 0x100) return Uint8Array.of(0xcc, n);
  if (n < 0x10000) return Uint8Array.of(0xcd, n >>> 8, n & 0xff);
  if (n < 0x100000000) return Uint8Array.of(0xce, n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  const out = new Uint8Array(9);
  out[0] = 0xcf;
  new DataView(out.buffer).setBigUint64(1, BigInt(n));
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let i = 0;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
}

export function encodeRequest(
  id: number,
  sid: string,
  op: string,
  args: unknown = null,
  deadlineMs: number | null = null,
  attachments: readonly Uint8Array[] = [],
): Uint8Array[] {
  const withDeadline = deadlineMs !== null;
  const h = withDeadline
    ? concat([HEAD_4, uint(id), tail(sid, op, true), uint(deadlineMs)])
    : concat([HEAD_3, uint(id), tail(sid, op, false)]);
  return [TAG, h, args === null || args === undefined ? NIL : encode(args), ...attachments];
}

/** An actor's checks, in section 15's order; throws DecodeError with the id it echoes. */
export function decodeRequest(frames: readonly Uint8Array[]): Request {
  if (frames.length < 3) throw fail("bad_request", `expected >= 3 frames, got ${frames.length}`);
  if (!isTag(frames[0])) throw fail("unsupported_version", "tag is not MOOR1");
  const h = header(frames[1]);
  const id = h.id;
  if (!isId(id)) throw fail("bad_request", "id must be an integer in [0, 2^53)");
  const { sid, op, deadline_ms: deadline, ep } = h;
  if (typeof sid !== "string" || sid.length === 0 || codePoints(sid) > limits.MAX_SID_LEN) {
    throw fail("bad_request", "sid must be a non-empty string", id);
  }
  if (typeof op !== "string" || op.length === 0 || codePoints(op) > limits.MAX_OP_LEN) {
    throw fail("bad_request", "op must be a non-empty string", id);
  }
  if (deadline !== undefined && deadline !== null && !(typeof deadline === "number" || typeof deadline === "bigint")) {
    throw fail("bad_request", "deadline_ms must be an integer", id);
  }
  if (ep !== undefined && ep !== null && typeof ep !== "string") throw fail("bad_request", "ep must be a string", id);
  if (frames.length - 3 > limits.MAX_ATTACHMENTS) {
    throw fail("message_too_large", `${frames.length - 3} attachments`, id);
  }
  const args = decodeBody(frames[2], limits.MAX_BODY_SIZE, id);
  return {
    id,
    sid,
    op,
    deadlineMs: deadline === undefined || deadline === null ? null : Number(deadline),
    args,
    attachments: frames.slice(3),
    epoch: typeof ep === "string" ? ep : null,
  };
}

/**
 * The same request (same id, deadline, body, attachments) to be run only by the actor life
 * `epoch`: what a client resends when the first attempt may have run there, so that a
 * successor, whose reply cache does not know the id, refuses it instead of running it a
 * second time (section 10). `ep` goes last in the header, as the reference encoder puts it.
 */
export function pinRequest(frames: readonly Uint8Array[], epoch: string): Uint8Array[] {
  const h = decode(frames[1], { wrapFloats: true }) as Record<string, Value>;
  h.ep = epoch;
  return [frames[0], encode(h), ...frames.slice(2)];
}

export function encodeReply(id: number | null, epoch: string, result: unknown = null, attachments: readonly Uint8Array[] = []): Uint8Array[] {
  return [TAG, encode({ id, ok: true, ep: epoch }), encode(result), ...attachments];
}

export function encodeError(id: number | null, epoch: string, error: WireError): Uint8Array[] {
  return [TAG, encode({ id, ok: false, ep: epoch }), encode(toWire(error))];
}

/** A reply; an unreadable body still gives its id (DecodeError.requestId), so the caller hears why. */
export function decodeReply(frames: readonly Uint8Array[]): Reply {
  if (frames.length < 3) throw fail("bad_request", `reply: expected >= 3 frames, got ${frames.length}`);
  if (!isTag(frames[0])) throw fail("unsupported_version", "reply tag is not MOOR1");
  const h = header(frames[1]);
  const id = h.id;
  if (id !== undefined && id !== null && !(typeof id === "number" && Number.isInteger(id))) {
    throw fail("bad_request", "reply id must be an integer or nil");
  }
  const rid = (id ?? null) as number | null;
  if (typeof h.ok !== "boolean") throw fail("bad_request", "reply header needs a bool 'ok'", rid);
  const body = decodeBody(frames[2], limits.MAX_MESSAGE_SIZE, rid);
  return { id: rid, ok: h.ok, epoch: typeof h.ep === "string" ? h.ep : "", body, attachments: frames.slice(3) };
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

export function encodeStream(topic: string, seq: number, epoch: string, body: unknown, attachments: readonly Uint8Array[] = []): Uint8Array[] {
  return [utf8.encode(topic), TAG, encode({ seq, ep: epoch }), encode(body), ...attachments];
}

export function encodeWelcome(topic: string, seq: number, epoch: string): Uint8Array[] {
  return [utf8.encode(topic), TAG, encode({ seq, ep: epoch, welcome: true }), NIL];
}

export function decodeStream(frames: readonly Uint8Array[]): StreamMessage {
  if (frames.length < 4 || !isTag(frames[1])) {
    throw fail("bad_request", "stream message: expected [topic, TAG, header, body]");
  }
  const h = header(frames[2]);
  if (!(typeof h.seq === "number" && Number.isInteger(h.seq))) {
    throw fail("bad_request", "stream header needs an integer 'seq'");
  }
  let topic: string;
  try {
    topic = utf8Strict.decode(frames[0]);
  } catch {
    throw fail("bad_request", "stream topic is not UTF-8");
  }
  const body = decodeBody(frames[3], limits.MAX_MESSAGE_SIZE);
  return {
    topic,
    seq: h.seq,
    epoch: typeof h.ep === "string" ? h.ep : "",
    body,
    attachments: frames.slice(4),
    welcome: h.welcome === true,
  };
}
