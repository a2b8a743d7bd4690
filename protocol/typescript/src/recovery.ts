/**
 * The recovery matrix (PROTOCOL.md section 7) and the policies built on it: retry budgets,
 * capped exponential back-off, and the per-actor circuit breaker (section 11). Time is passed
 * in (seconds, monotonic), never read, so the policies are pure.
 */
import type { WireError } from "./errors.js";

// category, severity, primary, fallback, max_retries (null: a throttling row, N/A).
export const MATRIX: [string, string, string, string | null, number | null][] = [
  ["terminal", "critical", "recreate_terminal", "alert_user", 1],
  ["terminal", "recoverable", "retry_command", "raw_output_mode", 3],
  ["filesystem", "critical", "alert_user", null, 0],
  ["filesystem", "recoverable", "retry_with_backoff", "cache_previous", 3],
  ["network", "critical", "reconnect_ipc", "local_mode", 5],
  ["network", "recoverable", "retry_request", "queue_for_later", 3],
  ["parser", "critical", "reset_parser_state", "skip_markers", 0],
  ["parser", "recoverable", "buffer_and_retry", "raw_passthrough", 1],
  ["resource", "critical", "free_resources", "graceful_shutdown", 0],
  ["resource", "recoverable", "throttle_operations", "reduce_quality", null],
  ["timeout", "recoverable", "increase_timeout", "cancel_operation", 2],
];

/** How many resends an error allows (section 7, "How a client uses it"). */
export function maxRetriesFor(e: WireError): number {
  if (!e.retryable) return 0;
  const row = MATRIX.find(([c, s]) => c === e.category && s === e.severity);
  if (row === undefined || row[4] === null) return 3;
  return row[4];
}

export class Backoff {
  constructor(
    readonly initial = 0.01,
    readonly factor = 2,
    readonly cap = 0.5,
    readonly jitter = 0.2,
  ) {}

  /** Seconds to wait before retry number `attempt` (0 for the first). */
  delay(attempt: number, random: () => number = Math.random): number {
    if (attempt < 0) return 0;
    const d = Math.min(this.cap, this.initial * this.factor ** Math.min(attempt, 64));
    return this.jitter ? d * (1 - this.jitter) + d * this.jitter * random() : d;
  }
}

export type BreakerState = "closed" | "open" | "half_open";

/**
 * closed -> open after `threshold` consecutive failures (attempts with no reply in time);
 * open -> half_open after `cooldown`; half_open lets `probes` calls through: a success
 * closes, a failure reopens with the cooldown doubled (at most `maxCooldown`). Any reply,
 * error replies included, is a success: the actor is alive. A probe never reported is given
 * up after `probeLease`, so the breaker cannot stay half-open for good.
 */
export class CircuitBreaker {
  state: BreakerState = "closed";
  failures = 0;
  cooldown: number;
  private openedAt = 0;
  private probesOut = 0;
  private probeAt = 0;

  constructor(
    readonly threshold = 5,
    readonly baseCooldown = 0.5,
    readonly maxCooldown = 10,
    readonly probes = 1,
    readonly probeLease = 30,
  ) {
    this.cooldown = baseCooldown;
  }

  current(now: number): BreakerState {
    if (this.state === "open" && now - this.openedAt >= this.cooldown) {
      this.state = "half_open";
      this.probesOut = 0;
    }
    return this.state;
  }

  allow(now: number): boolean {
    const s = this.current(now);
    if (s === "closed") return true;
    if (s === "half_open") {
      if (this.probesOut >= this.probes && now - this.probeAt >= this.probeLease) this.probesOut = 0;
      if (this.probesOut < this.probes) {
        this.probesOut += 1;
        this.probeAt = now;
        return true;
      }
    }
    return false;
  }

  /** An attempt ended with no outcome (the connection dropped under it): the probe it held,
   * if any, is free again, for its own resend or another call. */
  giveBack(): void {
    if (this.state === "half_open" && this.probesOut > 0) this.probesOut -= 1;
  }

  retryAfter(now: number): number {
    return this.state === "open" ? Math.max(0, this.openedAt + this.cooldown - now) : 0;
  }

  recordSuccess(): void {
    this.failures = 0;
    this.cooldown = this.baseCooldown;
    this.state = "closed";
  }

  recordFailure(now: number): void {
    this.failures += 1;
    if (this.state === "half_open") {
      this.cooldown = Math.min(this.maxCooldown, this.cooldown * 2);
      this.open(now);
    } else if (this.state === "closed" && this.failures >= this.threshold) {
      this.open(now);
    }
  }

  private open(now: number): void {
    this.openedAt = now;
    this.probesOut = 0;
    this.state = "open";
  }
}
