/**
 * Every decision of a call, none of its I/O (PROTOCOL.md sections 9-11): ids kept across
 * retries (the actor's reply cache answers a retry without running it again), deadlines,
 * what to do on a reply, a timeout, a dropped connection, a new epoch or a refused key, and
 * the breaker. The client only moves frames and waits.
 *
 * A non-idempotent call may have run, so it is resent only *pinned* to the actor life it was
 * sent to (the header's `ep`, section 10): that life answers it from its reply cache (done),
 * joins it (still running) or runs it (it never arrived); any other life refuses it
 * `outcome_unknown`. Over tcp (a remote client) a drop may leave the actor alive, so a
 * dropped connection or a timed-out attempt resends it pinned when the actor's epoch was
 * known at the first send; on ipc a drop means the actor's process ended, and such a call
 * ends `outcome_unknown` at once, or at its deadline. A resumable op (sys.info's
 * `resumable`: its effect is recorded outside the actor) is answered by any successor under
 * the same id, so it is resent as it is on a drop or a new epoch, never pinned.
 */
import { encodeRequest, pinRequest, type Reply } from "./envelope.js";
import { MoorageError, type WireError, fromWire, isCallerFault, wireError } from "./errors.js";
import { SCHEMA_IDEMPOTENT } from "./knownOps.js";
import { MAX_MESSAGE_SIZE } from "./limits.js";
import { Backoff, CircuitBreaker, maxRetriesFor } from "./recovery.js";

/** Ops every actor serves that are safe to repeat, whatever it says (sys.info among them:
 * learning never waits on learning); section 10. */
export const BUILTIN_IDEMPOTENT: ReadonlySet<string> = new Set(["sys.ping", "sys.hello", "sys.info", "replay"]);

/** Is `op` safe to repeat (section 10)? A built-in, one the client was configured with, or one
 * the actor's sys.info said (`learned`); until the actor has told, one the schema declares
 * (knownOps.ts), so that a read-only call to an actor that cannot answer its sys.info now
 * (stopped, restarting, crash-looping) is resent and ends `timeout`, never `outcome_unknown`.
 * The actor's own table wins once learned: another build, or an actor outside the default
 * tree serving an op of the same name, may say otherwise. */
export function knownIdempotent(op: string, learned: ReadonlySet<string> | undefined, configured: ReadonlySet<string>): boolean {
  return BUILTIN_IDEMPOTENT.has(op) || configured.has(op) || (learned ?? SCHEMA_IDEMPOTENT).has(op);
}

/** Error replies meaning "not run, and it may run later": resent whatever the op. */
export const NOT_RUN: ReadonlySet<string> = new Set(["busy", "stopping", "session_busy"]);
/** Of those, the refusals an op answers itself (before it ran anything): the actor's reply
 * cache keeps an op's answers under the request's id (only the runtime's own refusals are left
 * out), so the same frames would only hear the refusal again. Such a call is resent as a new
 * request: a fresh id under the same deadline (the refused id ran nothing). */
export const RENEWED: ReadonlySet<string> = new Set(["session_busy"]);
/** A call given no timeout waits for its op's declared `timeout_ms` plus this (the way there
 * and back), never longer than MAX_OP_TIMEOUT (an op declaring a day, as term.exec does,
 * bounds its own work with an argument instead); seconds (section 9). */
export const TRIP_MARGIN = 0.5;
export const MAX_OP_TIMEOUT = 60;
/** The matrix's Timeout row: an idempotent call's timed-out attempts resent at most this often. */
export const TIMEOUT_RETRIES = 2;
/** Ops whose `session` argument goes into an early failure's detail (section 10). */
const SESSION_OPS: ReadonlySet<string> = new Set(["term.exec", "term.create"]);

/** The ops a sys.info reply says are idempotent, and those it says are resumable (section 10);
 * anything else in it (a malformed entry) says neither. */
export function opsOfInfo(info: unknown): { idempotent: Set<string>; resumable: Set<string>; timeouts: Map<string, number> } {
  const ops = info !== null && typeof info === "object" ? (info as { ops?: unknown }).ops : undefined;
  const entries = ops !== null && typeof ops === "object" && !Array.isArray(ops) && !(ops instanceof Uint8Array)
    ? Object.entries(ops as Record<string, unknown>) : [];
  const saying = (flag: "idempotent" | "resumable"): Set<string> => new Set(entries
    .filter(([, d]) => d !== null && typeof d === "object" && (d as Record<string, unknown>)[flag] === true)
    .map(([n]) => n));
  // op -> seconds, from each entry's `timeout_ms` (a positive integer; else not known)
  const timeouts = new Map<string, number>();
  for (const [n, d] of entries) {
    const ms = d !== null && typeof d === "object" ? (d as Record<string, unknown>).timeout_ms : undefined;
    if (typeof ms === "number" && Number.isInteger(ms) && ms > 0) timeouts.set(n, ms / 1000);
  }
  return { idempotent: saying("idempotent"), resumable: saying("resumable"), timeouts };
}

/** The time of a call given none (section 9): its op's declared timeout (seconds, as sys.info
 * said it; undefined: not known) plus TRIP_MARGIN, at most MAX_OP_TIMEOUT, when that is longer
 * than the client's; else the client's (no call ends sooner than the client was told). */
export function callTimeout(declared: number | undefined, clientTimeout: number): number {
  return declared === undefined ? clientTimeout
    : Math.max(clientTimeout, Math.min(declared + TRIP_MARGIN, MAX_OP_TIMEOUT));
}

export interface CallOptions {
  /** Whole call, all attempts, in seconds (default: the client's). */
  timeout?: number;
  /** Overrides what the client knows of the op (sys.info's `idempotent`). */
  idempotent?: boolean;
  attachments?: readonly Uint8Array[];
  /** Reuse a request id: a retry of the same op and args, answered from the reply cache. */
  id?: number;
}

export interface PlanSettings {
  sid: string;
  timeout: number;
  attemptTimeout: number;
  backoff: Backoff;
  /** The tree this call's client found (by instance, or from a connection file), watched for
   * its end. Absent for a client given a directory (it waits for a tree to come up there) or
   * a remote one: never gone. */
  tree?: TreeWatch;
}

/** A tree a client found, seen ended (its instance lock free): since when a look at the lock
 * first found it so (the `now()` clock), and its directory. */
export interface TreeEnded {
  since: number;
  dir: string;
}

/** What a client knows of the end of the tree it found. */
export interface TreeWatch {
  /** Looks at the instance lock (or takes a recent look): the tree's end, or null while it
   * runs or cannot be told ended. A look that finds it running forgets an end seen before (a
   * tree holds the instance again). Asked when an attempt went unanswered or the connection
   * dropped (that tree will not answer, and the call would otherwise spend its whole budget),
   * and before a first send once `goneSince` is set. */
  gone(): TreeEnded | null;
  /** When a look first found the tree ended; null before one did, and again once a look finds
   * a tree holding the instance. No look is made: a call's first send asks the lock only once
   * its client has seen the tree end. */
  goneSince(): number | null;
}

/** What a call to a tree seen ended ends with, in the Python client's words: no tree can
 * answer it. */
export function notRunning(ended: TreeEnded): WireError {
  return wireError("not_running",
    `the moorage tree in ${ended.dir} has ended (its instance lock is free); start one with \`moorage up\``);
}

export type Verdict =
  | { kind: "done"; reply?: Reply; error?: MoorageError }
  | { kind: "resend"; delay: number; renew?: boolean }
  | { kind: "wait"; until: number };

export const now = (): number => performance.now() / 1000;

/** The `retry_after_ms` of a call the breaker refused before its first send (PROTOCOL.md
 * section 11): while open, the cooldown left; while half-open (its probe is out), the
 * breaker's current cooldown, by when the probe has most likely closed it or opened it again.
 * Never 0: a caller that honours it must not retry in a tight loop. */
export function refusalRetryAfterMs(br: CircuitBreaker, at: number): number {
  const left = br.state === "open" ? br.retryAfter(at) : br.cooldown;
  return Math.max(1, Math.ceil(left * 1000));
}

/** A drop as it was told (ActorLink.dropTold): the generation it started, the epoch it ended. */
export interface Drop {
  generation: number;
  epoch: string | null;
}

export class CallPlan {
  /** The id its replies come under: a new one when it is resent as a new request (renew). */
  id: number;
  readonly started: number;
  readonly deadline: number;
  readonly deadlineMs: number;
  frames: Uint8Array[];
  readonly timeout: number;
  attempts = 0;
  retries = 0;
  timeoutRetries = 0;
  /** The error the last attempt was answered with, while the call waits to send it again;
   * null once it is sent again, or when the last attempt was not answered. */
  lastError: WireError | null = null;
  /** The actor link's generation when this was last sent (section 10, early failure). */
  generation = 0;
  finished = false;
  /** The actor life a non-idempotent call went to, as known at its first send, which its
   * resends are pinned to; set by a remote ActorLink (start), never changed. null: not
   * resent when it may have run (not known, or on ipc), or resent freely (idempotent). */
  pin: string | null = null;
  /** Why the frames carry `ep`: a dropped connection or a timed-out attempt. */
  pinnedBy: "drop" | "timeout" | null = null;
  /** The op is resumable (sys.info's `resumable`, section 10): any successor of the actor
   * answers the same id, so on a drop or a new epoch it is resent as is, never pinned. Set by
   * the client before the first send. */
  resumable = false;

  constructor(
    id: number,
    readonly actor: string,
    readonly op: string,
    readonly args: unknown,
    readonly idempotent: boolean,
    readonly settings: PlanSettings,
    readonly breaker: CircuitBreaker,
    readonly record: (micros: number, ok: boolean, caller: boolean) => void,
    timeout: number | undefined,
    readonly attachments: readonly Uint8Array[] = [],
    startedAt: number = now(),
  ) {
    this.id = id;
    this.started = startedAt;
    this.timeout = timeout ?? settings.timeout;
    this.deadline = this.started + this.timeout;
    this.deadlineMs = Math.trunc(Date.now() + this.timeout * 1000);
    this.frames = encodeRequest(id, settings.sid, op, args, this.deadlineMs, attachments);
  }

  private error(e: WireError): MoorageError {
    return new MoorageError(e, this.actor, this.op, this.attempts);
  }

  /** Over: recorded once, whatever the outcome, and an error as the caller's or the
   * service's by the error table (as the actors count theirs). */
  done(at: number, reply?: Reply, error?: WireError | MoorageError): Verdict {
    const err = error === undefined ? undefined : error instanceof MoorageError ? error : this.error(error);
    this.finished = true;
    this.record(Math.trunc((at - this.started) * 1e6), err === undefined && reply !== undefined && reply.ok,
      err !== undefined && isCallerFault(err.error.name));
    return { kind: "done", reply, error: err };
  }

  /** Before the first send: the breaker may refuse at once, `circuit_open` ("not sent") with
   * `retry_after_ms` (refusalRetryAfterMs: never 0); and once the client has seen its tree
   * ended, while no tree holds the instance again, the call ends `not_running` unsent (nothing
   * can answer it, and one not safe to repeat would wait its whole budget). */
  start(at: number): Verdict {
    // A frame no actor takes: its socket drops the connection on one over MAXMSGSIZE, which
    // would end the call outcome_unknown although it cannot have run.
    let big = 0;
    for (let i = 2; i < this.frames.length; i++) big = Math.max(big, this.frames[i].length);
    if (big > MAX_MESSAGE_SIZE) {
      return this.done(at, undefined, wireError("message_too_large",
        `a frame of ${big} bytes, over the ${MAX_MESSAGE_SIZE} an actor takes (MAXMSGSIZE): not sent`));
    }
    const tree = this.settings.tree;
    if (tree !== undefined && tree.goneSince() !== null) {
      const ended = tree.gone();
      if (ended !== null) return this.done(at, undefined, notRunning(ended));
    }
    const br = this.breaker;
    if (br.state !== "closed" && !br.allow(at)) {
      return this.done(at, undefined, wireError("circuit_open", `${this.actor}: breaker ${br.state}`, {
        retry_after_ms: refusalRetryAfterMs(br, at),
      }));
    }
    this.attempts += 1;
    return { kind: "wait", until: this.attemptDeadline(at) };
  }

  attemptTimeout(): number {
    return this.settings.attemptTimeout * 2 ** this.timeoutRetries;
  }

  attemptDeadline(at: number): number {
    // A pinned call climbs the idempotent ladder too; past it, the last attempt of either lasts
    // to the deadline (an op that is slow, not lost, answers late: any copy's reply ends the call).
    const ladder = (this.idempotent || this.pin !== null) && this.timeoutRetries < TIMEOUT_RETRIES;
    return ladder ? Math.min(this.deadline, at + this.attemptTimeout()) : this.deadline;
  }

  /** Resent as a new request (a `resend` verdict with `renew`, RENEWED): under `id`, the same
   * deadline, not pinned (the refused id ran nothing, so no life holds an effect of it). */
  renew(id: number): void {
    this.id = id;
    this.frames = encodeRequest(id, this.settings.sid, this.op, this.args, this.deadlineMs, this.attachments);
    this.pinnedBy = null;
  }

  /** From now on the frames carry `ep`: only the life they may have run in may take them (its
   * reply cache knows the id); any other refuses them `outcome_unknown`. */
  private pinFrames(why: "drop" | "timeout"): void {
    if (this.pinnedBy !== null || this.pin === null) return;
    this.frames = pinRequest(this.frames, this.pin);
    this.pinnedBy = why;
  }

  /** outcome_unknown's detail: the epochs, what the actor `told` (kept), the call's session. */
  private detail(oldEpoch: string | null, newEpoch: string | null, told?: unknown): Record<string, unknown> {
    const detail: Record<string, unknown> = { old_epoch: oldEpoch, new_epoch: newEpoch };
    if (told !== undefined) {
      detail.request_id = this.id;
      if (told !== null && typeof told === "object" && !Array.isArray(told) && !(told instanceof Uint8Array)) Object.assign(detail, told);
    }
    const a = this.args as Record<string, unknown> | null;
    if (SESSION_OPS.has(this.op) && a !== null && typeof a === "object" && typeof a.session === "string") {
      detail.session = a.session;
    }
    return detail;
  }

  onReply(reply: Reply, at: number): Verdict {
    const br = this.breaker;
    if (br.failures || br.state !== "closed") br.recordSuccess();
    if (reply.ok) return this.done(at, reply);
    let err = fromWire(reply.body);
    if (this.pinnedBy === "drop" && err.name === "outcome_unknown") {
      // (the life that answered says why; the caller hears first what happened here)
      err = wireError("outcome_unknown", `${this.actor}'s connection dropped while ${this.op} was in flight; ${err.message}`,
        { detail: this.detail(this.pin, null, err.detail ?? {}) });
    }
    this.lastError = err;
    const mayRetry = NOT_RUN.has(err.name) || (this.idempotent && err.retryable);
    if (mayRetry && this.retries < maxRetriesFor(err)) {
      let delay = this.settings.backoff.delay(this.retries);
      if (err.retry_after_ms !== undefined) delay = Math.max(delay, err.retry_after_ms / 1000);
      if (at + delay < this.deadline) {
        this.retries += 1;
        return RENEWED.has(err.name) ? { kind: "resend", delay, renew: true } : { kind: "resend", delay };
      }
    }
    return this.done(at, undefined, err);
  }

  /** The call's end when the tree its client found has ended (TreeWatch.gone), else null:
   * `not_running` for a call safe to repeat (idempotent or resumable), or begun after the
   * client first saw the tree ended (no tree received it); one not safe to repeat that was
   * under way before may have run there before it ended: `outcome_unknown`, as it would be at
   * its deadline. `epoch`: the actor's as the client knew it (the error's detail). */
  private onTreeGone(at: number, epoch: string | null): Verdict | null {
    const ended = this.settings.tree?.gone() ?? null;
    if (ended === null) return null;
    if (this.idempotent || this.resumable || this.started >= ended.since) {
      return this.done(at, undefined, notRunning(ended));
    }
    return this.done(at, undefined, wireError("outcome_unknown",
      `the moorage tree in ${ended.dir} ended while ${this.op} was in flight; it may or may not have run`,
      { detail: this.detail(this.pin ?? epoch, null, {}) }));
  }

  /** The attempt's wait ran out with no reply. `epoch`: the actor's as the client knows it,
   * named in the error's detail should its tree have ended meanwhile. */
  onTimeout(at: number, epoch: string | null = null): Verdict {
    // (before the breaker hears of it: the actor did not fail, its tree ended, and the next
    // call is told so too, not `circuit_open`)
    const gone = this.onTreeGone(at, epoch);
    if (gone !== null) {
      this.breaker.giveBack(); // (a half-open breaker's probe: it told nothing of the actor)
      return gone;
    }
    this.breaker.recordFailure(at);
    this.lastError = null; // (the last attempt was not answered)
    if (at >= this.deadline) {
      return this.done(at, undefined, this.idempotent
        ? wireError("timeout", `no reply in ${this.timeout}s (${this.attempts} attempts)`)
        : wireError("outcome_unknown", `no reply in ${this.timeout}s; the request may or may not have run`));
    }
    if (!this.idempotent) {
      if (this.pin === null) return this.done(at, undefined, wireError("outcome_unknown", "no reply"));
      // Lost on the way, or still running: either way its life answers the pinned frames
      // once (the reply cache, or the run they join).
      this.pinFrames("timeout");
      this.retries += 1;
      this.timeoutRetries += 1;
      return { kind: "resend", delay: 0 };
    }
    this.retries += 1;
    this.timeoutRetries += 1;
    return { kind: "resend", delay: Math.min(this.settings.backoff.delay(this.retries - 1), Math.max(0, this.deadline - at)) };
  }

  /** The actor this was sent to is gone (section 10, early failure on a dead actor): a new
   * epoch answered, or the connection dropped (`newEpoch` null). A drop once the client's
   * tree has ended ends the call there (onTreeGone: `not_running`, or `outcome_unknown` for
   * one not safe to repeat that may have run before the tree ended). An idempotent or
   * resumable call is resent at once, as it is (a successor answers it). A pinned call is
   * resent on a drop, at once and on each drop until answered (only a remote link pins: over
   * tcp the actor may live on, and its life answers the pinned frames once). */
  onActorGone(at: number, oldEpoch: string | null, newEpoch: string | null): Verdict {
    this.breaker.giveBack();
    this.lastError = null; // (the last attempt was not answered)
    const gone = newEpoch === null ? this.onTreeGone(at, oldEpoch) : null;
    if (gone !== null) return gone;
    if (this.idempotent || this.resumable) return { kind: "resend", delay: 0 };
    if (newEpoch === null && this.pin !== null) {
      this.pinFrames("drop");
      return { kind: "resend", delay: 0 };
    }
    return this.done(at, undefined, wireError("outcome_unknown",
      `${this.actor} ${newEpoch === null ? "dropped its connection" : `restarted (epoch ${newEpoch})`} while ${this.op} was in flight; it may or may not have run`,
      { detail: this.detail(oldEpoch, newEpoch) }));
  }

  /** The tree refused this client's key at the CURVE handshake (remote mode): no attempt with
   * this key can reach the actor, so the call ends now, not at its deadline (the client names
   * it `unauthorized`). A non-idempotent one may have run on a connection made before the key
   * was revoked: `outcome_unknown`. */
  onRefused(at: number): Verdict {
    this.breaker.giveBack();
    return this.done(at, undefined, wireError(this.idempotent ? "timeout" : "outcome_unknown",
      `no reply: the tree refused this client's key (${this.attempts} attempts)`));
  }

  /** The client was closed while this waited: no reply can reach it now. A call waiting out a
   * back-off after an answer (busy, session_busy, a retryable error of an idempotent op) has
   * nothing in flight: the caller ended it before it was sent again, `cancelled`. Any other may
   * have run: `outcome_unknown`, or `timeout` when it is safe to repeat, as at its deadline. */
  onClosed(at: number): Verdict {
    const last = this.lastError;
    if (last !== null) {
      return this.done(at, undefined, wireError("cancelled",
        `the client was closed before ${this.op} was sent again (${this.attempts} attempts; the last was answered ${last.name}: ${last.message})`));
    }
    this.breaker.giveBack();
    return this.done(at, undefined, wireError(this.idempotent ? "timeout" : "outcome_unknown",
      `no reply: the client was closed (${this.attempts} attempts)`));
  }

  /** Send again, if the breaker lets it. A pinned resend is not new work for the actor: the
   * breaker is not asked (its outcome is counted as any). This call was sent, so a refusal
   * ends it with its own outcome, never `circuit_open` ("not sent"): the error its last
   * attempt was answered with (busy, a retryable error), else, its last attempt unanswered,
   * `timeout` (idempotent) or `outcome_unknown` (it may have run: a resumable call whose
   * connection dropped). */
  resend(at: number): Verdict {
    const br = this.breaker;
    if (this.pinnedBy === null && !br.allow(at)) {
      if (this.lastError !== null) return this.done(at, undefined, this.lastError);
      const why = `not sent again: ${this.actor}'s breaker is ${br.state} (${this.attempts} attempts in ${(at - this.started).toPrecision(3)}s)`;
      return this.done(at, undefined, this.idempotent
        ? wireError("timeout", `no reply; ${why}`)
        : wireError("outcome_unknown", `no reply; the request may or may not have run; ${why}`,
          { detail: this.detail(this.pin, null, {}) }));
    }
    this.attempts += 1;
    this.lastError = null; // (sent again: its last attempt is not answered yet)
    return { kind: "wait", until: this.attemptDeadline(at) };
  }
}

/**
 * One actor as the client knows it: the epoch it recorded, the generation (a drop or a new
 * epoch each start one), whether the tree refused this client's key, and its calls in
 * flight. Pure: the client tells it what happened and acts on the verdicts it gets back.
 * A `remote` link (tcp) pins its calls that are neither idempotent nor resumable; an ipc one
 * never does.
 */
export class ActorLink {
  epoch: string | null = null;
  generation = 0;
  restartsSeen = 0;
  /** The last handshake (tcp): the tree refused this client's key; a successful one clears it. */
  refused = false;
  readonly inFlight = new Map<number, CallPlan>();
  private droppedSinceEpoch = false;

  constructor(readonly actor: string, epoch: string | null = null, readonly remote = false) {
    this.epoch = epoch;
  }

  /** A new call's first send: pinned to the epoch known now, if it is to be (section 10). While
   * the key stands refused it ends at once: no reply can come. */
  start(plan: CallPlan, at: number): Verdict {
    if (this.remote && !plan.idempotent && !plan.resumable) plan.pin = this.epoch;
    const v = plan.start(at);
    if (v.kind !== "wait") return v;
    if (this.refused) return plan.onRefused(at);
    this.sent(plan);
    return v;
  }

  /** A call goes out (or out again): it belongs to the current generation. */
  sent(plan: CallPlan): void {
    plan.generation = this.generation;
    this.inFlight.set(plan.id, plan);
  }

  finished(plan: CallPlan): void {
    this.inFlight.delete(plan.id);
  }

  /** A call resent as a new request (CallPlan.renew) under `id`: pinned as a first send is. The
   * resend's `sent` files it under the new id. */
  renew(plan: CallPlan, id: number): void {
    this.inFlight.delete(plan.id);
    plan.renew(id);
    if (this.remote && !plan.idempotent && !plan.resumable) plan.pin = this.epoch;
  }

  /** The DEALER's monitor saw the connection drop. */
  onDisconnect(at: number): [CallPlan, Verdict][] {
    return this.onDropped(at, this.dropTold());
  }

  /** A drop was told: the calls sent from now on are the next generation's. What it does to
   * those sent before is `onDropped`'s, once the replies that came before it are taken. */
  dropTold(): Drop {
    this.generation += 1;
    this.droppedSinceEpoch = true;
    return { generation: this.generation, epoch: this.epoch };
  }

  onDropped(at: number, drop: Drop): [CallPlan, Verdict][] {
    return this.change(at, drop.epoch, null, drop.generation);
  }

  /** A reply or hello carried `epoch`; a change ends (or resends) what was sent before it. */
  onEpoch(epoch: string, at: number): [CallPlan, Verdict][] {
    if (!epoch) return [];
    if (epoch === this.epoch) {
      this.sameEpoch();
      return [];
    }
    const old = this.epoch;
    this.epoch = epoch;
    if (old === null) return [];
    this.restartsSeen += 1;
    if (this.droppedSinceEpoch) {
      // The drop already ended what was sent before it; what was sent since goes to this one.
      this.droppedSinceEpoch = false;
      return [];
    }
    this.generation += 1;
    return this.change(at, old, epoch);
  }

  /** A reply carried the recorded epoch: the life that answered before a drop answers after
   * it, so that drop was no restart (a link dropped under a live actor), and a new epoch heard
   * later is a change again. */
  sameEpoch(): void {
    this.droppedSinceEpoch = false;
  }

  /** A handshake failed on this client's key (HANDSHAKE_FAILED_AUTH): every call in flight
   * ends now (libzmq does not try that handshake again: no reply can come). */
  onRefused(at: number): [CallPlan, Verdict][] {
    this.refused = true;
    const out: [CallPlan, Verdict][] = [];
    for (const plan of [...this.inFlight.values()]) {
      this.inFlight.delete(plan.id);
      if (!plan.finished) out.push([plan, plan.onRefused(at)]);
    }
    return out;
  }

  /** A handshake succeeded: the key is taken (the allow-list is read at every handshake). */
  onHandshake(): void {
    this.refused = false;
  }

  private change(at: number, oldEpoch: string | null, newEpoch: string | null, before = this.generation): [CallPlan, Verdict][] {
    const out: [CallPlan, Verdict][] = [];
    for (const plan of [...this.inFlight.values()]) {
      if (plan.generation >= before || plan.finished) continue;
      const v = plan.onActorGone(at, oldEpoch, newEpoch);
      if (v.kind === "done") this.inFlight.delete(plan.id);
      out.push([plan, v]);
    }
    return out;
  }
}
