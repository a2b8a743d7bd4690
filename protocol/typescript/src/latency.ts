/**
 * End-to-end latency per (actor, op) as this client sees it, optionally pushed to the metrics
 * actor (PROTOCOL.md section 2, "A client's own latency"): header {actor: client.<name>, pid,
 * ep: sid}, ops named `<actor>/<op>`. Of each op's errors, those that were the caller's by the
 * error table's `fault` column (section 6) go as `caller`, as every actor counts its own, so the
 * metrics actor's failure rate for the client's row counts only the service's.
 */
import { Push } from "zeromq";

import { connectOrClose } from "./endpoints.js";
import { TAG } from "./envelope.js";
import { Recorder } from "./histogram.js";
import { MAX_OPS_PER_PUSH, MAX_OP_LEN, MAX_PUSH_BUCKETS, MAX_PUSH_HIST_BYTES } from "./limits.js";
import { encode } from "./msgpack.js";

export const MAX_NAME = 100;

export interface Counts {
  ok: number;
  error: number;
  /** Of `error`, those that were the caller's fault. */
  caller: number;
  times: Recorder;
}

function fresh(): Counts {
  return { ok: 0, error: 0, caller: 0, times: new Recorder() };
}

function addTo(into: Counts, c: Counts): void {
  into.ok += c.ok;
  into.error += c.error;
  into.caller += c.caller;
  into.times.add(c.times);
}

export function checkMetricsName(name: unknown): string {
  if (typeof name !== "string" || name.length === 0 || name.length > MAX_NAME || /[\x00-\x1f\x7f-\x9f]/.test(name)) {
    throw new Error(`metricsName must be 1 to ${MAX_NAME} printable characters`);
  }
  return name;
}

export interface LatencyRow {
  actor: string;
  op: string;
  ok: number;
  error: number;
  count: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

export class LatencyBook {
  private readonly life = new Map<string, Counts>();
  private pending = new Map<string, Counts>();

  constructor(readonly pushing: boolean) {}

  /** One finished call; `caller`: it failed with an error that is the caller's (looked at
   * only for an error). */
  record(actor: string, op: string, micros: number, ok: boolean, caller = false): void {
    const key = `${actor}\u0000${op}`;
    for (const table of this.pushing ? [this.life, this.pending] : [this.life]) {
      let c = table.get(key);
      if (c === undefined) table.set(key, (c = fresh()));
      if (ok) c.ok += 1;
      else {
        c.error += 1;
        if (caller) c.caller += 1;
      }
      c.times.record(micros);
    }
  }

  report(): LatencyRow[] {
    return [...this.life.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([key, c]) => {
      const [actor, op] = key.split("\u0000");
      return { actor, op, ok: c.ok, error: c.error, ...c.times.summary() };
    });
  }

  /** What ended since the last take, merged by pushed op name `<actor>/<op>` (cut to 64). */
  take(): [string, Counts][] {
    const merged = new Map<string, Counts>();
    for (const [key, c] of this.pending) {
      const [actor, op] = key.split("\u0000");
      const name = `${actor}/${op}`.slice(0, MAX_OP_LEN);
      const m = merged.get(name);
      if (m === undefined) merged.set(name, c);
      else addTo(m, c);
    }
    this.pending = new Map();
    return [...merged.entries()];
  }

  /** Counts that could not leave go with the next push. */
  putBack(name: string, c: Counts): void {
    const slash = name.indexOf("/");
    const key = `${name.slice(0, slash)}\u0000${name.slice(slash + 1)}`;
    const mine = this.pending.get(key);
    if (mine === undefined) this.pending.set(key, c);
    else addTo(mine, c);
  }
}

/** One op of a push body: its pushed name, its counts, its encoded histogram, and that
 * histogram's non-zero counts. */
export interface PushedOp {
  name: string;
  counts: Counts;
  hist: Uint8Array;
  buckets: number;
}

/** `groups` in order, cut into push bodies the metrics actor takes: at most MAX_OPS_PER_PUSH
 * ops, MAX_PUSH_HIST_BYTES of encoded histograms and MAX_PUSH_BUCKETS non-zero counts in them
 * each, since it refuses a bigger push whole (every figure in it lost). An op past a bound
 * alone goes in a body of its own. */
export function splitPush(groups: [string, Counts][]): PushedOp[][] {
  const bodies: PushedOp[][] = [];
  let body: PushedOp[] = [];
  let bytes = 0;
  let nonZero = 0;
  for (const [name, counts] of groups) {
    const hist = counts.times.encode();
    const buckets = counts.times.nonZeroCounts();
    if (body.length > 0 && (body.length === MAX_OPS_PER_PUSH || bytes + hist.length > MAX_PUSH_HIST_BYTES
        || nonZero + buckets > MAX_PUSH_BUCKETS)) {
      bodies.push(body);
      body = [];
      bytes = 0;
      nonZero = 0;
    }
    body.push({ name, counts, hist, buckets });
    bytes += hist.length;
    nonZero += buckets;
  }
  if (body.length > 0) bodies.push(body);
  return bodies;
}

/** Pushes the book's pending counts to `metrics.in` every `interval` seconds (a timer, unref'd). */
export class LatencyPusher {
  private readonly sock: Push;
  private readonly header: Uint8Array;
  private readonly timer: NodeJS.Timeout;
  sent = 0;
  deferred = 0;

  /** `options`: the socket options of `endpoint` (over tcp, CURVE and heartbeats). No send
   * timeout is needed: a push that cannot leave at once is deferred, never awaited. */
  constructor(readonly book: LatencyBook, endpoint: string, name: string, sid: string, interval: number,
    options: Record<string, string | number> = {}) {
    this.sock = new Push({ ...options, linger: 250, sendHighWaterMark: 100 });
    connectOrClose(this.sock, () => endpoint, "metrics.in", "metrics", "push");
    this.header = encode({ actor: `client.${checkMetricsName(name)}`, pid: process.pid, ep: sid });
    this.timer = setInterval(() => void this.pushNow(), interval * 1000);
    this.timer.unref();
  }

  private sending: Promise<unknown> | null = null;

  /** Send what is pending; the number of messages handed to ZeroMQ. A push that cannot leave
   * at once (the metrics actor away, its queue full) waits in ZeroMQ's queue, and what is
   * recorded meanwhile goes with the next push. */
  async pushNow(): Promise<number> {
    if (this.sending !== null) return 0;
    const bodies = splitPush(this.book.take());
    let sent = 0;
    for (let i = 0; i < bodies.length; i++) {
      const body: Record<string, { ok: number; error: number; caller?: number; hist: Uint8Array }> = {};
      for (const { name, counts, hist } of bodies[i]) {
        // (`caller` only when some errors were the caller's: absent = 0, as an actor pushes)
        body[name] = counts.caller > 0 ? { ok: counts.ok, error: counts.error, caller: counts.caller, hist }
          : { ok: counts.ok, error: counts.error, hist };
      }
      const send = this.sock.send([TAG, this.header, encode(body)]);
      this.sending = send;
      const left = await Promise.race([
        send.then(() => false, () => false),
        new Promise<boolean>((r) => setTimeout(() => r(true), 50).unref()),
      ]);
      if (left) {
        this.deferred += 1;
        const clear = (): void => {
          this.sending = null;
        };
        void send.then(clear, clear); // (a send the close cuts short is no error of the caller's)
        for (const { name, counts } of bodies.slice(i + 1).flat()) this.book.putBack(name, counts);
        break;
      }
      this.sending = null;
      sent += 1;
    }
    this.sent += sent;
    return sent;
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.pushNow();
    this.sock.close();
  }
}
