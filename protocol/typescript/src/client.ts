/**
 * The client: one DEALER per actor carrying any number of concurrent calls, and SUB sockets
 * for subscriptions (PROTOCOL.md section 2). Decisions live in calls.ts and streams.ts; this
 * file moves frames and waits.
 *
 *   const client = new Client({ instance: "default" });
 *   await client.hello("terminal");
 *   const { session } = await client.call("terminal", "term.create", {}) as { session: string };
 *   for await (const ev of client.subscribe("terminal", [`term.out.${session}`])) { ... }
 */
import { randomBytes } from "node:crypto";
import { dirname } from "node:path";

import { Dealer, Subscriber } from "zeromq";

import { ActorLink, BUILTIN_IDEMPOTENT, type CallOptions, CallPlan, type TreeEnded, type TreeWatch, type Verdict, callTimeout, knownIdempotent, now, opsOfInfo } from "./calls.js";
import {
  clientKeys,
  connectOrClose,
  type CurveKeys,
  endpointsOf,
  type Endpoints,
  remoteEndpointsOf,
  runtimeDir,
  runtimeDirOfConnectionFile,
  treeRunning,
} from "./endpoints.js";
import { type Reply, decodeReply, decodeStream } from "./envelope.js";
import { DecodeError, MoorageError, NO_REPLY_SENT, unauthorized, undelivered, wireError } from "./errors.js";
import { HWM, MAX_MESSAGE_SIZE, MAX_TOPIC_LEN, STREAM_HWM } from "./limits.js";
import { LatencyBook, type LatencyRow, LatencyPusher, checkMetricsName } from "./latency.js";
import type { Value } from "./msgpack.js";
import { Backoff, type BreakerState, CircuitBreaker } from "./recovery.js";
import { type ByteGap, GapFill, type NeedReplay, type ReplayAnswer, type StreamEvent, StreamTracker, type SubscriptionEvent } from "./streams.js";

export interface ClientOptions {
  /** The runtime directory itself (wins over everything, section 2). */
  runtimeDir?: string;
  /** An instance name (section 2's row 1). */
  instance?: string;
  sid?: string;
  /** Whole call, all attempts, seconds, of a call given no `timeout`; an op that declares a
   * longer one (its sys.info `timeout_ms`) gets that instead, at most 60 s (section 9). */
  timeout?: number;
  /** One attempt of an idempotent call before it is resent, seconds. */
  attemptTimeout?: number;
  backoff?: Backoff;
  breakerThreshold?: number;
  breakerCooldown?: number;
  reconnectIvlMs?: number;
  reconnectIvlMaxMs?: number;
  idempotentOps?: Iterable<string>;
  /** Ask each actor's sys.info which of its ops are idempotent (once, before it matters). */
  learnOps?: boolean;
  /** Push this client's latencies to the metrics actor as `client.<metricsName>`. */
  metricsName?: string;
  metricsInterval?: number;
  /** Remote mode: the tree elsewhere that this connection file (its `tree.json`, copied)
   * describes, over tcp with CURVE; `keys` default to this user's client pair, `host`
   * replaces the address the tree bound. */
  remote?: { connectionFile: string; keys?: CurveKeys; host?: string };
}

export interface SubscribeOptions {
  /** A new topic's first seq wanted (1: all that is retained); none: from now. */
  fromSeq?: number;
  /** The SUB's receive high-water mark (default 1000, `STREAM_HWM`). */
  receiveHighWaterMark?: number;
}

/** Of a call's time, the share that learning the actor's idempotent ops may take first. */
const LEARN_SHARE = 0.5;
/** How long one look at the instance lock (Client.treeGone) answers for, seconds: Node has no
 * flock(2), so a look spawns `flock`, and the calls whose attempts end together (a pipeline to
 * a stalled actor), or that start together at a tree seen ended, share one. A tree that ended,
 * or one that took the instance again, is told at most this much later. */
const TREE_LOOK_S = 0.1;
/** How long a closed socket's last monitor event ("end", MONITOR_STOPPED) is waited for before
 * a client gives up telling whether a call was delivered (Conn.neverDelivered), ms. */
const UNDELIVERED_CHECK_MS = 2000;

type Item = { kind: "reply"; reply: Reply } | { kind: "undecodable"; error: DecodeError } | { kind: "verdict"; verdict: Verdict }
  | { kind: "unsent"; error: unknown };

/** What an item of its inbox means for a call (a send that failed is thrown: the call's end). */
function verdictOf(plan: CallPlan, item: Item): Verdict {
  if (item.kind === "verdict") return item.verdict;
  if (item.kind === "unsent") throw item.error;
  if (item.kind === "undecodable") return plan.done(now(), undefined, item.error.error);
  return plan.onReply(item.reply, now());
}

/** One call's inbox: what its actor's connection hands it, awaited with a deadline (seconds
 * on the `now()` clock). Deadlines are checked by the connection's one timer, not by a timer
 * per wait: a timer per call costs more than the rest of a call's own work. It holds its call's
 * plan, which close() settles wherever the call is (in flight, or waiting out a back-off). */
class Inbox {
  private items: Item[] = [];
  private waiter: ((item: Item | null) => void) | null = null;
  until = Infinity;

  constructor(readonly plan: CallPlan) {}

  push(item: Item): void {
    if (this.waiter !== null) {
      const w = this.waiter;
      this.waiter = null;
      w(item);
    } else this.items.push(item);
  }

  get waiting(): boolean {
    return this.waiter !== null;
  }

  /** The deadline passed: the waiting call hears null. */
  expire(at: number): void {
    if (this.waiter !== null && at >= this.until) {
      const w = this.waiter;
      this.waiter = null;
      w(null);
    }
  }

  next(until: number): Promise<Item | null> {
    const item = this.items.shift();
    if (item !== undefined) return Promise.resolve(item);
    if (until <= now()) return Promise.resolve(null);
    this.until = until;
    return new Promise((resolve) => {
      this.waiter = resolve;
    });
  }
}

/** One send of a call's frames, for the attempt that waits for its reply until `until` (the
 * `now()` clock); a failure goes to the call's `inbox`. */
interface SendJob {
  readonly frames: Uint8Array[];
  readonly until: number;
  readonly inbox: Inbox;
}

/** The call of `op` to `actor` on a closed client: refused, never sent (nothing reads replies
 * any more, and a socket made now would keep Node alive). */
function closedError(actor: string, op: string): MoorageError {
  return new MoorageError(wireError("cancelled", `the client is closed: ${op} to ${actor} not sent`), actor, op, 0);
}

class Conn {
  readonly sock: Dealer;
  readonly link: ActorLink;
  readonly inboxes = new Map<number, Inbox>();
  private sendingNow = false;
  private readonly sendQueue: SendJob[] = [];
  private timer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;
  private closed = false;
  /** Handshakes completed on this socket: libzmq sends nothing on a connection before its
   * handshake, and says so before it sends anything (ipc too). While 0, nothing left it. */
  handshakes = 0;
  /** Connections made that ended before their handshake (a wrong server key: the CURVE server
   * cannot read our HELLO and closes it). */
  endedEarly = 0;
  /** A connection is made ("connect") and its handshake has neither completed nor failed yet. */
  private handshaking = false;
  /** The endpoint this DEALER connects to. */
  readonly endpoint: string;
  private monitorEnded = false;
  private onMonitorEnd: (() => void) | null = null;

  constructor(readonly client: Client, readonly actor: string, op: string) {
    const o = client.options;
    const sock = new Dealer({
      linger: 0,
      reconnectInterval: o.reconnectIvlMs,
      reconnectMaxInterval: o.reconnectIvlMaxMs,
      maxMessageSize: MAX_MESSAGE_SIZE,
      sendHighWaterMark: HWM,
      receiveHighWaterMark: HWM,
      ...client.endpoints.socketOptions("rpc"), // (last: a tcp endpoint's limit, with CURVE's room, wins)
    });
    this.link = new ActorLink(actor, null, client.remote);
    this.sock = sock;
    this.watch();
    connectOrClose(sock, () => client.endpoints.rpc(actor), "rpc", actor, op);
    this.endpoint = client.endpoints.rpc(actor);
    void this.read();
  }

  /** Close the socket (what it queued is dropped unsent) and wait for its monitor's last event:
   * true if no handshake ever completed on it, so nothing it was given left it; false if one
   * did, or if that event does not come within UNDELIVERED_CHECK_MS. */
  async neverDelivered(): Promise<boolean> {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.sock.close();
    if (!this.monitorEnded) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, UNDELIVERED_CHECK_MS);
        this.onMonitorEnd = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.monitorEnded && this.handshakes === 0;
  }

  /** Is a connection's handshake under way, with none before it ended early? It may yet
   * complete (a CURVE handshake is some three round trips: over a link with 200 ms each way,
   * longer than a replay page's 1 s), and what the socket holds then leaves with it. A call
   * that got no reply meanwhile is not told undelivered: that would close the socket and throw
   * the handshake away, and the next call's connection would start over, as slow: on such a
   * link no call would ever get through. A connection that ended early (a stale server key) or
   * none made (a tree down) is no such hope. */
  mayGetIn(): boolean {
    return this.handshaking && this.endedEarly === 0;
  }

  /** One send. A remote (tcp) socket has sendTimeout 0: after the tree refused its key
   * libzmq keeps no queue for it, and a send that cannot be queued is left to the attempt's
   * deadline (the plan then decides) instead of waiting for ever. */
  private sendOne(frames: Uint8Array[]): Promise<void> {
    // (closed: the call ends by what close() put in its inbox)
    if (this.closed) return Promise.resolve();
    return this.sock.send(frames).catch((e: { code?: string }) => {
      if (e?.code !== "EAGAIN" && !this.closed) throw e;
    });
  }

  /** Send the frames of an attempt that waits for its reply until `until`, in order: zeromq.js
   * takes one send at a time per socket. The call does not wait for the send, only for its
   * reply, and that wait ends at `until` whatever became of the send: a DEALER with nowhere to
   * put frames (a connection libzmq ended for good, as a frame over MAXMSGSIZE is a protocol
   * error it never reconnects after) waits for room for ever, and would hold the call as long.
   * The call then ends as its plan says. Frames still queued here when their attempt's wait is
   * over are dropped, never sent after it; a send that fails ends its call with the error. */
  send(frames: Uint8Array[], until: number, inbox: Inbox): void {
    const job: SendJob = { frames, until, inbox };
    if (this.sendingNow) this.sendQueue.push(job);
    else this.start(job);
  }

  private start(job: SendJob): void {
    this.sendingNow = true;
    this.sendOne(job.frames).then(() => this.drainSends(), (error: unknown) => {
      job.inbox.push({ kind: "unsent", error });
      this.drainSends();
    });
  }

  private drainSends(): void {
    let next = this.sendQueue.shift();
    const at = next === undefined ? 0 : now();
    while (next !== undefined && next.until <= at) next = this.sendQueue.shift();
    if (next === undefined) this.sendingNow = false;
    else this.start(next);
  }

  /** A call waits until `until`: one timer per connection, armed for the earliest deadline
   * (re-armed only when an earlier one comes), looks at them. */
  waiting(until: number): void {
    if (this.closed) return;
    if (this.timer === null || until < this.timerAt) this.arm(until);
  }

  private arm(until: number): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timerAt = until;
    this.timer = setTimeout(() => this.sweep(), Math.max(0, (until - now()) * 1000) + 1);
    this.timer.unref();
  }

  private sweep(): void {
    this.timer = null;
    const at = now();
    let next = Infinity;
    for (const inbox of this.inboxes.values()) {
      inbox.expire(at);
      if (inbox.waiting && inbox.until < next) next = inbox.until;
    }
    if (next !== Infinity) this.arm(next);
  }

  private async read(): Promise<void> {
    const sock = this.sock;
    try {
      for (;;) this.onFrames(await sock.receive());
    } catch (e) {
      if (!this.closed) throw e;
    }
  }

  private onFrames(frames: Buffer[]): void {
    let reply: Reply;
    try {
      reply = decodeReply(frames);
    } catch (e) {
      if (e instanceof DecodeError && e.requestId !== null) {
        this.inboxes.get(e.requestId)?.push({ kind: "undecodable", error: e });
      }
      return;
    }
    const plan = reply.id === null ? undefined : this.link.inFlight.get(reply.id);
    if (reply.epoch !== this.link.epoch) {
      if (plan !== undefined) this.link.finished(plan); // its own reply: not a victim of the change
      this.dispatch(this.link.onEpoch(reply.epoch, now()));
      this.client.noteEpoch(this.actor, reply.epoch);
    } else this.link.sameEpoch();
    const inbox = reply.id === null ? undefined : this.inboxes.get(reply.id);
    // A reply no call waits for (its call ended before it came): the actor answered, which
    // its breaker counts as a success, as any reply (section 11).
    if (inbox === undefined) this.client.lateReply(this.actor);
    else inbox.push({ kind: "reply", reply });
  }

  private watch(): void {
    const events = this.sock.events;
    // (each event below but "end" ends a handshake under way, or the connection it was on)
    events.on("connect", () => {
      this.handshaking = true;
    });
    events.on("disconnect", () => {
      this.handshaking = false;
      // The actor's I/O thread queues a reply before it ends the connection, but the monitor
      // may be read first: the drop is acted on once this turn of the event loop has handed
      // out what the socket already holds (a reply that came before the drop is its call's,
      // not resent for nor ended `outcome_unknown`). Calls sent from now on are not its own.
      const drop = this.link.dropTold();
      setImmediate(() => this.dispatch(this.link.onDropped(now(), drop)));
    });
    // (only over tcp, where the tree's ZAP handler judges our key at every handshake)
    events.on("handshake:error:auth", () => {
      this.handshaking = false;
      this.dispatch(this.link.onRefused(now()));
    });
    events.on("handshake", () => {
      this.handshaking = false;
      this.handshakes += 1;
      this.link.onHandshake();
    });
    events.on("handshake:error:protocol", () => {
      this.handshaking = false;
      this.endedEarly += 1;
    });
    events.on("handshake:error:other", () => {
      this.handshaking = false;
      this.endedEarly += 1;
    });
    events.on("end", () => {
      this.monitorEnded = true;
      this.onMonitorEnd?.();
    });
  }

  private dispatch(changes: [CallPlan, Verdict][]): void {
    for (const [plan, verdict] of changes) this.inboxes.get(plan.id)?.push({ kind: "verdict", verdict });
  }

  close(): void {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    // Nothing reads replies or looks at deadlines from now on: every call still waiting ends,
    // in flight or waiting out a back-off (its inbox is its wait either way).
    const at = now();
    for (const inbox of this.inboxes.values()) {
      if (!inbox.plan.finished) inbox.push({ kind: "verdict", verdict: inbox.plan.onClosed(at) });
    }
    this.sock.close();
  }
}

/** A client of one tree. Any number of calls may be in flight; close() when done. */
/** Each option checked where it is given (a RangeError naming it), not where it is first
 * used: a timeout of "5" or NaN would fail a call's deadline arithmetic, a negative interval
 * the socket's options, far from the mistake. The idempotent ops, as a set. */
function checkOptions(o: Client["options"], idempotentOps: unknown): Set<string> {
  const seconds = (v: unknown, least: number): boolean =>
    typeof v === "number" && Number.isFinite(v) && (least > 0 ? v > 0 : v >= 0);
  const count = (v: unknown, least: number): boolean => Number.isSafeInteger(v) && (v as number) >= least;
  const given = idempotentOps ?? [];
  // (read once: a generator given would be empty the second time)
  const ops = typeof given === "object" && given !== null && Symbol.iterator in given
    ? [...(given as Iterable<unknown>)] : null;
  const isOps = ops !== null && ops.every((op) => typeof op === "string");
  const checks: [string, unknown, boolean, string][] = [
    ["timeout", o.timeout, seconds(o.timeout, 1), "seconds > 0"],
    ["attemptTimeout", o.attemptTimeout, seconds(o.attemptTimeout, 1), "seconds > 0"],
    ["metricsInterval", o.metricsInterval, seconds(o.metricsInterval, 1), "seconds > 0"],
    ["breakerCooldown", o.breakerCooldown, seconds(o.breakerCooldown, 0), "seconds >= 0"],
    ["breakerThreshold", o.breakerThreshold, count(o.breakerThreshold, 1), "a count >= 1"],
    ["reconnectIvlMs", o.reconnectIvlMs, count(o.reconnectIvlMs, 0), "milliseconds, an integer >= 0"],
    ["reconnectIvlMaxMs", o.reconnectIvlMaxMs, count(o.reconnectIvlMaxMs, 0), "milliseconds, an integer >= 0"],
    ["backoff", o.backoff, o.backoff instanceof Backoff, "a Backoff"],
    ["learnOps", o.learnOps, typeof o.learnOps === "boolean", "a boolean"],
    ["idempotentOps", idempotentOps, isOps, "an iterable of op names"],
  ];
  for (const [name, value, ok, want] of checks) {
    if (!ok) throw new RangeError(`ClientOptions.${name} must be ${want}, not ${String(value).slice(0, 60)}`);
  }
  return new Set(ops as string[]);
}

export class Client {
  readonly options: Required<Omit<ClientOptions, "runtimeDir" | "instance" | "sid" | "metricsName" | "idempotentOps" | "remote">> & {
    metricsName: string | undefined;
  };
  readonly runtimeDir: string;
  readonly endpoints: Endpoints;
  readonly sid: string;
  /** Over tcp with CURVE (a connection file's `remote` table), not ipc. */
  readonly remote: boolean;
  private readonly idempotentOps: Set<string>;
  private readonly conns = new Map<string, Conn>();
  private readonly breakers = new Map<string, CircuitBreaker>();
  private readonly learned = new Map<string, Set<string>>();
  /** actor -> its sys.info in flight, asked by a first call (learnedOps), and by when it ends
   * (the `now()` clock). */
  private readonly learning = new Map<string, { asked: Promise<unknown>; until: number }>();
  /** actor -> its resumable ops (sys.info's `resumable`, learnt with the idempotent ones). */
  private readonly resumableOps = new Map<string, Set<string>>();
  /** actor -> each op's declared timeout, seconds (sys.info's `timeout_ms`, learnt with them). */
  private readonly opTimeouts = new Map<string, Map<string, number>>();
  private readonly epochs = new Map<string, string>();
  private readonly restarts = new Map<string, number>();
  private readonly subs = new Set<Subscription>();
  private readonly latency: LatencyBook;
  private readonly pusher: LatencyPusher | null = null;
  private nextId = 1;
  private closed = false;
  /** This client found its tree (by instance, or from a connection file: its lock was held),
   * so it may take that tree for ended (treeGone); one given a directory or a remote one never
   * does. */
  private found = false;
  /** The last look at the lock: when (the `now()` clock), and whether the tree had ended. */
  private lookedAt = -Infinity;
  private lookedGone = false;
  /** When a look first found the tree ended (the `now()` clock); null while it runs: a call
   * begun after it can have reached no tree, and one begun while it is set looks at the lock
   * before it is sent. */
  private goneSince: number | null = null;
  private readonly treeWatch: TreeWatch = { gone: () => this.treeGone(), goneSince: () => this.goneSince };

  constructor(options: ClientOptions = {}) {
    const opts = {
      timeout: options.timeout ?? 5,
      attemptTimeout: options.attemptTimeout ?? 1,
      backoff: options.backoff ?? new Backoff(0.01, 2, 0.5, 0.2),
      breakerThreshold: options.breakerThreshold ?? 5,
      breakerCooldown: options.breakerCooldown ?? 0.5,
      reconnectIvlMs: options.reconnectIvlMs ?? 5,
      reconnectIvlMaxMs: options.reconnectIvlMaxMs ?? 0,
      learnOps: options.learnOps ?? true,
      metricsName: options.metricsName === undefined ? undefined : checkMetricsName(options.metricsName),
      metricsInterval: options.metricsInterval ?? 1,
    };
    const idempotentOps = checkOptions(opts, options.idempotentOps);
    const remote = options.remote;
    this.remote = remote !== undefined;
    this.runtimeDir = remote ? runtimeDirOfConnectionFile(remote.connectionFile) : options.runtimeDir ?? runtimeDir(options.instance);
    if (!remote && options.runtimeDir === undefined && !treeRunning(this.runtimeDir)) {
      // Given no directory, the client finds the running tree or says at once that none runs:
      // a request to a socket with no tree would only ever time out (section 2).
      const what = options.instance ? `instance ${JSON.stringify(options.instance)}` : this.runtimeDir;
      throw new MoorageError(wireError("not_running",
        `no moorage tree is running for ${what} (no live lock in ${this.runtimeDir}); start one with \`moorage up\``), "", "", 0);
    }
    this.found = !remote && options.runtimeDir === undefined;
    this.endpoints = remote
      ? remoteEndpointsOf(remote.connectionFile, remote.keys ?? clientKeys(), remote.host)
      : endpointsOf(this.runtimeDir);
    this.sid = options.sid ?? `${process.pid}-${randomBytes(6).toString("hex")}`;
    this.options = opts;
    this.idempotentOps = idempotentOps;
    this.latency = new LatencyBook(this.options.metricsName !== undefined);
    if (this.options.metricsName !== undefined) {
      this.pusher = new LatencyPusher(this.latency, this.endpoints.metricsIn(), this.options.metricsName, this.sid,
        this.options.metricsInterval, this.endpoints.socketOptions("in"));
    }
  }

  /** A client of the tree a connection file (`tree.json`) describes; `not_running` at once
   * if that tree does not run (its instance lock, beside the file, is free). */
  static fromConnectionFile(path: string, options: ClientOptions = {}): Client {
    const folder = dirname(path);
    if (!treeRunning(folder)) {
      throw new MoorageError(wireError("not_running",
        `no moorage tree is running for ${path} (its instance lock in ${folder} is free)`), "", "", 0);
    }
    const client = new Client({ ...options, runtimeDir: runtimeDirOfConnectionFile(path) });
    client.found = !client.remote;
    return client;
  }

  /** Has the tree this client found (by instance, or from a connection file) ended, its
   * instance lock free? Then since when it is seen so (`goneSince`), else null. Asked by a
   * call whose attempt went unanswered or whose connection dropped, and by a call's first
   * send once the tree was seen ended (CallPlan): that tree will not answer it, and an editor
   * polling a stopped tree would hear so only at each call's whole budget, as `timeout` or
   * `unavailable`. A look that finds a tree holding the instance again forgets the end. A
   * client given a directory, which waits for a tree to come up there, and a remote one never
   * take their tree for gone; nor does a look that cannot be made (a lock not to be trusted,
   * no `flock` here), which leaves what was seen before as it was. */
  private treeGone(): TreeEnded | null {
    if (!this.found) return null;
    const at = now();
    if (at - this.lookedAt >= TREE_LOOK_S) {
      let running: boolean | null = null;
      try {
        running = treeRunning(this.runtimeDir);
      } catch {
        // (forbidden now, or unreadable: not a tree seen to end, from now on)
        this.goneSince = null;
      }
      this.lookedAt = at;
      this.lookedGone = running === false;
      if (running === true) this.goneSince = null;
      else if (running === false && this.goneSince === null) this.goneSince = at;
    }
    return this.lookedGone && this.goneSince !== null ? { since: this.goneSince, dir: this.runtimeDir } : null;
  }

  /** `actor`'s connection, made on first use; refused once the client is closed (a call that
   * waited to learn the actor's ops while close() ran included). */
  private conn(actor: string, op: string): Conn {
    if (this.closed) throw closedError(actor, op);
    let c = this.conns.get(actor);
    if (c === undefined) this.conns.set(actor, (c = new Conn(this, actor, op)));
    return c;
  }

  private breaker(actor: string): CircuitBreaker {
    let b = this.breakers.get(actor);
    if (b === undefined) this.breakers.set(actor, (b = new CircuitBreaker(this.options.breakerThreshold, this.options.breakerCooldown)));
    return b;
  }

  breakerState(actor: string): BreakerState {
    return this.breaker(actor).current(now());
  }

  /** @internal A reply no call waits for came from `actor`: a success to its breaker. */
  lateReply(actor: string): void {
    const br = this.breakers.get(actor);
    if (br !== undefined && (br.failures || br.state !== "closed")) br.recordSuccess();
  }

  /** The epoch `actor` last answered with (section 8), or null. */
  epoch(actor: string): string | null {
    return this.epochs.get(actor) ?? null;
  }

  /** How many times this client saw `actor`'s epoch change (a restart). */
  restartsSeen(actor: string): number {
    return this.restarts.get(actor) ?? 0;
  }

  /** @internal */
  noteEpoch(actor: string, epoch: string): void {
    const old = this.epochs.get(actor);
    if (!epoch || old === epoch) return;
    if (old !== undefined) this.restarts.set(actor, (this.restarts.get(actor) ?? 0) + 1);
    this.epochs.set(actor, epoch);
  }

  /** The time of a call of `op` given none: its op's declared timeout (as learned from sys.info,
   * run-time overrides included) plus a margin, at most 60 s; the client's `timeout` when the
   * actor has not told it (section 9). */
  callTimeout(actor: string, op: string): number {
    return callTimeout(this.opTimeouts.get(actor)?.get(op), this.options.timeout);
  }

  private isIdempotent(actor: string, op: string): boolean {
    return knownIdempotent(op, this.learned.get(actor), this.idempotentOps);
  }

  /** One call; the whole reply (body and attachments), or a MoorageError. */
  async request(actor: string, op: string, args: unknown = null, options: CallOptions = {}): Promise<Reply> {
    if (this.closed) throw closedError(actor, op);
    let timeout = options.timeout ?? this.callTimeout(actor, op);
    if (options.idempotent === undefined && this.options.learnOps && !this.learned.has(actor) && !BUILTIN_IDEMPOTENT.has(op) && !this.idempotentOps.has(op)) {
      const t0 = now();
      const share = LEARN_SHARE * timeout;
      await this.learnedOps(actor, share);
      // What learning told (the op's own timeout, when none was given), less the wait, never
      // more of it than the share: a longer wait is an event loop too busy to turn (a burst of
      // first calls), not the learning, and charged to the call it could leave it a
      // millisecond, too little for any reply.
      timeout = Math.max(0.001, (options.timeout ?? this.callTimeout(actor, op)) - Math.min(share, now() - t0));
    }
    const idempotent = options.idempotent ?? this.isIdempotent(actor, op);
    const conn = this.conn(actor, op);
    let id = options.id ?? this.nextId++;
    const plan = new CallPlan(id, actor, op, args,  idempotent,
      { sid: this.sid, timeout: this.options.timeout, attemptTimeout: this.options.attemptTimeout, backoff: this.options.backoff,
        tree: this.found ? this.treeWatch : undefined },
      this.breaker(actor), (micros, ok, caller) => this.latency.record(actor, op, micros, ok, caller), timeout, options.attachments);
    plan.resumable = this.resumableOps.get(actor)?.has(op) ?? false;
    const inbox = new Inbox(plan);
    conn.inboxes.set(id, inbox);
    try {
      let v = conn.link.start(plan, plan.started);
      if (v.kind === "wait") conn.send(plan.frames, v.until, inbox);
      for (;;) {
        if (v.kind === "done") {
          if (v.error !== undefined) {
            const key = this.endpoints.clientKey;
            throw conn.link.refused && key !== null ? unauthorized(v.error, key) : await this.undelivered(conn, id, v.error);
          }
          return v.reply!;
        }
        if (v.kind === "resend") {
          if (v.renew) { // a new request (calls.ts RENEWED): its replies come under a new id
            conn.inboxes.delete(id);
            id = this.nextId++;
            conn.link.renew(plan, id);
            conn.inboxes.set(id, inbox);
          }
          if (v.delay > 0) {
            // The back-off is a wait on the call's inbox: what comes meanwhile (close()'s
            // verdict) ends it; nothing by its end, and the call is sent again. Refused, it is
            // not in flight meanwhile: a drop then (an actor that answered `stopping` exits)
            // is none of its business, and the resend goes to the successor.
            if (plan.lastError !== null) conn.link.finished(plan);
            const until = now() + v.delay;
            conn.waiting(until);
            const item = await inbox.next(until);
            if (item !== null) {
              v = verdictOf(plan, item);
              continue;
            }
          }
          v = plan.resend(now());
          if (v.kind === "wait") {
            conn.link.sent(plan);
            conn.send(plan.frames, v.until, inbox);
          }
          continue;
        }
        conn.waiting(v.until);
        const item = await inbox.next(v.until);
        v = item === null ? plan.onTimeout(now(), conn.link.epoch) : verdictOf(plan, item);
      }
    } finally {
      conn.inboxes.delete(id);
      conn.link.finished(plan);
    }
  }

  /** What a call that ended with `e` throws: for a call with no reply on a connection that
   * never completed a handshake (a stale or wrong server key, a tree down), `undelivered`'s
   * error once the socket is closed and nothing it held can leave any more; the next call
   * connects anew. While other calls still wait on that socket it is left open for them
   * (closing it would drop their requests): the call keeps its error, and the last of them to
   * end closes it. So does a call while a handshake is under way (Conn.mayGetIn: a slow link),
   * the socket kept for it. */
  private async undelivered(conn: Conn, id: number, e: MoorageError): Promise<MoorageError> {
    if (!NO_REPLY_SENT.has(e.error.name) || conn.handshakes > 0 || conn.link.refused || conn.mayGetIn()) return e;
    if (this.conns.get(conn.actor) !== conn || [...conn.inboxes.keys()].some((k) => k !== id)) return e;
    this.conns.delete(conn.actor);
    if (!(await conn.neverDelivered())) return e;
    return undelivered(e, conn.endpoint, conn.endedEarly, this.remote);
  }

  /** One call; the reply's body, or a MoorageError. */
  async call(actor: string, op: string, args: unknown = null, options: CallOptions = {}): Promise<Value> {
    return (await this.request(actor, op, args, options)).body;
  }

  /** sys.hello: who answers, and its epoch (remembered; a new one is a restart). */
  async hello(actor: string): Promise<{ actor: string; ep: string; proto: number; version: string; pid: number; max_msg: number }> {
    const r = (await this.call(actor, "sys.hello", { client: `typescript ${this.sid}` })) as {
      actor: string; ep: string; proto: number; version: string; pid: number; max_msg: number;
    };
    if (r.proto !== 1) throw new MoorageError({ code: 103, name: "unsupported_version", category: "network", severity: "critical", retryable: false, fallback_available: false, message: `${actor} speaks protocol ${r.proto}` }, actor, "sys.hello");
    return r;
  }

  /** Wait, `share` seconds at most, for `actor`'s ops to be learned. One sys.info per actor is
   * in flight at a time, with the share of the call that asked first; each first call made
   * meanwhile waits for its answer (a burst of first calls each asking for itself would double
   * what the actor receives, and fill its queue). On its failure each goes on as a call to an actor whose ops are not known,
   * and the next first call asks again. A call whose share ends sooner goes on then, and the
   * learning goes on for the others. */
  private async learnedOps(actor: string, share: number): Promise<void> {
    let learning = this.learning.get(actor);
    if (learning === undefined) {
      const asked: Promise<unknown> = this.learnOps(actor, share).finally(() => {
        if (this.learning.get(actor)?.asked === asked) this.learning.delete(actor);
      });
      asked.catch(() => undefined); // (thrown to the calls that wait for it, if any do)
      this.learning.set(actor, (learning = { asked, until: now() + share }));
    }
    if (now() + share >= learning.until) { // (it ends within this call's share)
      await learning.asked;
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    const over = new Promise<void>((resolve) => (timer = setTimeout(resolve, share * 1000)));
    try {
      await Promise.race([learning.asked, over]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ask `actor` which of its ops are idempotent (returned) and which resumable; until it can
   * say, those the schema declares idempotent count as such (knownOps.ts), and none as
   * resumable (the safe side). */
  async learnOps(actor: string, timeout?: number): Promise<ReadonlySet<string>> {
    try {
      const info = await this.call(actor, "sys.info", null, { timeout: timeout ?? this.options.timeout });
      const { idempotent, resumable, timeouts } = opsOfInfo(info);
      this.learned.set(actor, idempotent);
      this.opTimeouts.set(actor, timeouts);
      this.resumableOps.set(actor, resumable);
      return idempotent;
    } catch (e) {
      if (e instanceof MoorageError) return new Set();
      throw e;
    }
  }

  /** Subscribe to `topics` (prefixes; [""] for all) of `actor`; `fromSeq` 1 for all retained. */
  subscribe(actor: string, topics: readonly string[] = [""], options: SubscribeOptions = {}): Subscription {
    if (this.closed) throw closedError(actor, "subscribe");
    const sub = new Subscription(this, actor, topics.length ? topics : [""], options);
    this.subs.add(sub);
    return sub;
  }

  /** @internal */
  forget(sub: Subscription): void {
    this.subs.delete(sub);
  }

  /** End-to-end latency per (actor, op), microseconds, over this client's life. */
  latencyReport(): LatencyRow[] {
    return this.latency.report();
  }

  /** Push now what was recorded since the last push (with `metricsName`). */
  async pushLatency(): Promise<number> {
    return this.pusher === null ? 0 : this.pusher.pushNow();
  }

  /** Close every socket: calls still waiting end (Conn.close), subscriptions' `next()` returns
   * null, and calls or subscriptions from now on are refused `cancelled`. */
  async close(): Promise<void> {
    this.closed = true;
    for (const s of [...this.subs]) s.close();
    for (const c of this.conns.values()) c.close();
    this.conns.clear();
    if (this.pusher !== null) await this.pusher.close();
  }
}

/** What a subscription's wait for frames ended on besides frames. */
const WOKEN = Symbol("woken");
const TIMED_OUT = Symbol("timed out");

/**
 * Ordered, gap-repaired events of one actor's topics: messages, losses and resets (section
 * 12), and for terminal output the bytes a gap skipped that its scrollback no longer held
 * (`bytes_lost`), by `next()` or `for await`.
 */
export class Subscription implements AsyncIterable<SubscriptionEvent> {
  readonly tracker: StreamTracker;
  private readonly sock: Subscriber;
  private readonly ready: StreamEvent[] = [];
  /** A `next()` is filling the ByteGap at the head of `ready`: the others wait for its bytes. */
  private filling = false;
  /** Frames the socket handed over, not read yet; a receive failed (the socket closed). */
  private readonly arrived: Buffer[][] = [];
  private failure: { error: unknown } | null = null;
  private receiving = false;
  private closed = false;
  /** The `next()` calls waiting, each woken by what comes: frames, events from elsewhere
   * than the socket (catchUp's replays), the close. Each wait is a promise of its own that
   * only its call holds: a promise raced again by every `next()` (the socket's receive, or
   * one wake-up signal) keeps every race's result, and so every message, reachable. */
  private readonly wakers = new Set<() => void>();

  constructor(readonly client: Client, readonly actor: string, readonly topics: readonly string[], options: SubscribeOptions) {
    for (const t of topics) {
      // The publisher closes a connection that subscribes a longer topic, and the SUB would
      // resend it at each reconnect: every topic of the socket lost for good.
      const bytes = Buffer.byteLength(t, "utf8");
      if (bytes > MAX_TOPIC_LEN) {
        throw new MoorageError(wireError("bad_args",
          `${actor}: a topic of ${bytes} bytes (at most ${MAX_TOPIC_LEN}): ${JSON.stringify(t.slice(0, 40))}...`), actor, "subscribe", 0);
      }
    }
    const o = client.options;
    this.sock = new Subscriber({
      linger: 0,
      reconnectInterval: o.reconnectIvlMs,
      reconnectMaxInterval: o.reconnectIvlMaxMs,
      maxMessageSize: MAX_MESSAGE_SIZE,
      receiveHighWaterMark: options.receiveHighWaterMark ?? STREAM_HWM,
      ...client.endpoints.socketOptions("pub"), // (last: a tcp endpoint's limit, with CURVE's room, wins)
    });
    for (const t of topics) this.sock.subscribe(t);
    connectOrClose(this.sock, () => client.endpoints.pub(actor), "pub", actor, "subscribe");
    this.tracker = new StreamTracker(options.fromSeq ?? null, topics);
  }

  /** The SUB's receive high-water mark: at most this many messages wait here unread
   * (`STREAM_HWM` unless `receiveHighWaterMark` said otherwise; section 15); what comes past
   * it is dropped, a gap `next` repairs or reports. */
  get receiveHighWaterMark(): number {
    return this.sock.receiveHighWaterMark;
  }

  /** True once every subscribed prefix's round of welcomes has ended (section 12). */
  get live(): boolean {
    return this.topics.every((t) => this.tracker.live.has(t));
  }

  private wake(): void {
    const wakers = [...this.wakers];
    this.wakers.clear();
    for (const w of wakers) w();
  }

  /** One receive at a time (the socket takes no other), its frames kept for `next()`. */
  private receive(): void {
    if (this.receiving || this.closed) return;
    this.receiving = true;
    this.sock.receive().then(
      (frames) => {
        this.receiving = false;
        this.arrived.push(frames);
        this.wake();
      },
      (error: unknown) => {
        this.receiving = false;
        if (!this.closed) this.failure = { error };
        this.wake();
      });
  }

  /** Until something comes (WOKEN) or `end` (the `now()` clock; null: no end) passes. */
  private wait(end: number | null): Promise<typeof WOKEN | typeof TIMED_OUT> {
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const woken = (): void => {
        clearTimeout(timer);
        resolve(WOKEN);
      };
      this.wakers.add(woken);
      if (end !== null) {
        timer = setTimeout(() => {
          this.wakers.delete(woken);
          resolve(TIMED_OUT);
        }, Math.max(0, (end - now()) * 1000));
      }
    });
  }

  private deliver(events: StreamEvent[]): void {
    if (events.length === 0) return;
    this.ready.push(...events);
    this.wake();
  }

  /** The time of one replay page asked for by a caller that must return by `end` (the `now()`
   * clock; null: no bound, the client's timeout): what is left of it, never more than a call's
   * timeout, and at least one attempt's, so that a caller polling with `next(0)` still gets a
   * gap repaired rather than reported lost (section 12; the Python and Rust clients' rule). */
  private replayTimeout(end: number | null): number | undefined {
    if (end === null) return undefined;
    const o = this.client.options;
    return Math.min(o.timeout, Math.max(o.attemptTimeout, end - now()));
  }

  /** Replay until the gap is filled or reported lost, each page by `end` (`replayTimeout`).
   * A failed call reports the gap lost and goes on with the held messages (a later gap among
   * them is replayed in turn); anything else, or a closed subscription, reports every held gap
   * lost: the topic is never left held. */
  private async replay(topic: string, fromSeq: number, end: number | null): Promise<void> {
    let need: NeedReplay | null = { topic, fromSeq };
    while (need !== null) {
      const asked: NeedReplay = need;
      let step: [StreamEvent[], NeedReplay | null];
      try {
        const reply = await this.client.request(this.actor, "replay", { topic: asked.topic, from_seq: asked.fromSeq },
          { timeout: this.replayTimeout(end) });
        step = this.tracker.onReplay(asked.topic, reply.body as ReplayAnswer, reply.attachments);
      } catch (e) {
        if (!(e instanceof MoorageError) || this.closed) {
          this.deliver(this.tracker.onReplayFailed(asked.topic));
          return;
        }
        step = this.tracker.replayFailed(asked.topic);
      }
      this.deliver(step[0]);
      need = step[1];
    }
  }

  /** Terminal output skipped with no seq missing (PROTOCOL.md section 12, "Byte streams"),
   * the `ByteGap` at the head of `ready`: asked of the terminal's scrollback, each page by `end`
   * as a replay's is, and replaced there by its bytes and a `BytesLost` for what the scrollback
   * no longer held or could not give. Whatever ends it early (a close, an error that is no
   * call's failure) reports the rest lost first: the gap is never left undelivered. */
  private async fill(gap: ByteGap, end: number | null): Promise<void> {
    this.filling = true;
    const fill = new GapFill(gap);
    try {
      for (let args = fill.ask(); args !== null && !this.closed; args = fill.ask()) {
        let reply: Reply;
        try {
          reply = await this.client.request(this.actor, "term.scrollback", args, { timeout: this.replayTimeout(end) });
        } catch (e) {
          if (!(e instanceof MoorageError)) throw e;
          break;
        }
        fill.take(reply.body, reply.attachments);
      }
    } finally {
      fill.failed(); // (the rest, if any: lost)
      const at = this.ready.indexOf(gap);
      if (at >= 0) this.ready.splice(at, 1, ...fill.events);
      this.filling = false;
    }
  }

  /** The next event, or null when `timeout` seconds pass with none (null timeout: wait), and
   * null once the subscription (or its client) is closed: a `for await` then ends. */
  async next(timeout: number | null = null): Promise<SubscriptionEvent | null> {
    const end = timeout === null ? null : now() + timeout;
    for (;;) {
      const ev = await this.arrive(end);
      if (ev === null || ev.kind !== "byte_gap") return ev;
      if (this.filling) {
        // (another next() fills it: its bytes come before what follows)
        if ((await this.wait(end)) === TIMED_OUT) return null;
      } else {
        try {
          await this.fill(ev, end);
        } finally {
          // (the others waiting for its bytes: woken now, so that this call, the first to
          // come to the gap, takes the first of them)
          this.wake();
        }
      }
    }
  }

  /** The event at the head of `ready` (taken, unless a ByteGap: that one stays there until its
   * fill replaces it), read from the socket until there is one; null as `next()` returns it. */
  private async arrive(end: number | null): Promise<StreamEvent | null> {
    while (!this.closed && this.ready.length === 0) {
      const frames = this.arrived.shift();
      if (frames === undefined) {
        if (this.failure !== null) {
          const { error } = this.failure;
          this.failure = null;
          throw error;
        }
        this.receive();
        if ((await this.wait(end)) === TIMED_OUT) return null;
        continue;
      }
      let msg;
      try {
        msg = decodeStream(frames);
      } catch {
        continue;
      }
      const [events, need] = this.tracker.onMessage(msg);
      this.ready.push(...events);
      if (need !== null) await this.replay(need.topic, need.fromSeq, end);
    }
    if (this.closed) return null;
    return this.ready[0].kind === "byte_gap" ? this.ready[0] : this.ready.shift()!;
  }

  /** Ask for what may have been lost at the end of a burst (the stream went quiet): the
   * events, if any, come from `next()`, one already waiting included (section 12, "Tail loss").
   * Given `timeout` seconds, its replays take what is left of them (each page at least one
   * attempt's time), as a `next(timeout)` does; else each page the client's call timeout. */
  async catchUp(timeout: number | null = null): Promise<void> {
    if (this.closed) return;
    const end = timeout === null ? null : now() + timeout;
    for (const need of this.tracker.catchUp()) await this.replay(need.topic, need.fromSeq, end);
  }

  /** Until every prefix is live (its welcomes arrived). The events meanwhile are returned and
   * also kept for `next()`, which hands them on first (as the Rust client's `until_live`). */
  async untilLive(timeout: number): Promise<SubscriptionEvent[]> {
    const end = now() + timeout;
    const early: SubscriptionEvent[] = [];
    while (!this.live && !this.closed) {
      const left = end - now();
      if (left <= 0) throw new MoorageError({ code: 200, name: "timeout", category: "timeout", severity: "recoverable", retryable: true, fallback_available: false, message: `${this.actor}: subscription not live in ${timeout}s` }, this.actor, "subscribe");
      const ev = await this.next(Math.min(left, 0.05));
      if (ev !== null) early.push(ev);
    }
    this.ready.unshift(...early);
    return early;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<SubscriptionEvent> {
    for (;;) {
      const ev = await this.next();
      if (ev === null) return;
      yield ev;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    // A receive still waiting ends with the socket (its rejection is not kept), and a
    // next() waiting returns null.
    this.wake();
    this.sock.close();
    this.client.forget(this);
  }
}
