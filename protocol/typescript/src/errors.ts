/**
 * The error taxonomy (PROTOCOL.md section 6): every failure a caller sees is a MoorageError
 * carrying a classified WireError, whether an actor answered it or the client decided it
 * (a timeout, an open breaker, an actor that died mid-call).
 */

export interface ErrorKind {
  code: number;
  name: string;
  category: string;
  severity: string;
  retryable: boolean;
  fallbackAvailable: boolean;
  summary: string;
  /** Whose the failure is: the caller's (its request cannot be) or the service's. */
  fault: string;
}

// code, name, category, severity, retryable, fallback_available, summary, fault (section 6's
// table;
// a test keeps the two identical).
const TABLE: [number, string, string, string, boolean, boolean, string, string][] = [
  [100, "bad_request", "network", "warning", false, false, "malformed frame or header", "caller"],
  [101, "unknown_op", "caller", "warning", false, false, "the actor has no such op", "caller"],
  [102, "bad_args", "caller", "warning", false, false, "arguments missing or of wrong type", "caller"],
  [103, "unsupported_version", "network", "critical", false, false, "unknown protocol tag", "caller"],
  [104, "message_too_large", "network", "warning", false, false, "over a decoding limit", "caller"],
  [105, "bad_config", "caller", "critical", false, false, "the configuration cannot describe a tree", "caller"],
  [110, "unavailable", "network", "recoverable", true, true, "actor not answering", "service"],
  [111, "circuit_open", "network", "recoverable", true, true, "breaker open for this actor", "service"],
  [112, "outcome_unknown", "network", "critical", false, false, "may or may not have run", "service"],
  [113, "unknown_actor", "caller", "warning", false, false, "no such actor in the tree", "caller"],
  [114, "stopping", "network", "recoverable", true, false, "the actor is shutting down", "service"],
  [115, "not_running", "network", "critical", false, false, "no tree is running for this instance", "service"],
  [116, "already_running", "network", "warning", false, false, "a tree already runs for this instance", "caller"],
  [117, "start_failed", "network", "critical", false, false, "the tree could not start", "service"],
  [118, "unauthorized", "network", "critical", false, false, "the tree refused this client's key", "caller"],
  [200, "timeout", "timeout", "recoverable", true, false, "no reply before the deadline", "service"],
  [201, "deadline_expired", "timeout", "recoverable", true, false, "expired; not run", "service"],
  [300, "busy", "resource", "recoverable", true, true, "queue full or load shed; retry", "service"],
  [301, "resource_exhausted", "resource", "critical", false, true, "a hard limit was hit", "service"],
  [400, "not_found", "filesystem", "critical", false, false, "no such file or directory", "caller"],
  [401, "forbidden", "filesystem", "critical", false, false, "permission or confinement", "caller"],
  [402, "is_directory", "filesystem", "critical", false, false, "a directory, not a file", "caller"],
  [403, "no_space", "filesystem", "critical", false, false, "the device is full", "service"],
  [404, "file_too_large", "filesystem", "critical", false, false, "page the read", "caller"],
  [405, "conflict", "filesystem", "critical", false, false, "changed since the caller saw it", "caller"],
  [406, "io_error", "filesystem", "recoverable", true, true, "transient I/O failure", "service"],
  [407, "not_a_directory", "filesystem", "critical", false, false, "a file, not a dir", "caller"],
  [408, "watch_not_found", "filesystem", "warning", false, false, "no such watch", "caller"],
  [500, "session_not_found", "terminal", "warning", false, false, "no such session", "caller"],
  [501, "pty_failed", "terminal", "critical", true, true, "could not create a PTY", "service"],
  [502, "shell_exited", "terminal", "critical", true, true, "the session's shell is gone", "service"],
  [503, "exec_failed", "terminal", "recoverable", true, true, "command did not complete", "service"],
  [504, "session_busy", "terminal", "recoverable", true, false, "a command is running", "caller"],
  [600, "parse_error", "parser", "recoverable", false, true, "input could not be parsed", "service"],
  [601, "stream_not_found", "parser", "warning", false, false, "no such parser stream", "caller"],
  [602, "buffer_overflow", "parser", "critical", false, true, "partial buffer over cap", "service"],
  [603, "stream_gap", "parser", "warning", false, false, "offset skips ahead", "caller"],
  [700, "cancelled", "user_cancelled", "info", false, false, "cancelled by the caller", "caller"],
  [900, "internal", "network", "critical", false, false, "a handler raised; bug report", "service"],
];

export const KINDS: ReadonlyMap<string, ErrorKind> = new Map(
  TABLE.map(([code, name, category, severity, retryable, fallbackAvailable, summary, fault]) => [
    name,
    { code, name, category, severity, retryable, fallbackAvailable, summary, fault },
  ]),
);
export const BY_CODE: ReadonlyMap<number, ErrorKind> = new Map([...KINDS.values()].map((k) => [k.code, k]));

/** Whether an error of this name is the caller's (section 6's `fault`), as the actors count
 * theirs; a name the table lacks (a newer peer's) is the service's, the side that does not
 * flatter it. */
export function isCallerFault(name: string): boolean {
  return KINDS.get(name)?.fault === "caller";
}

/** An error as it travels (section 6): the code's classification plus this instance's message. */
export interface WireError {
  code: number;
  name: string;
  category: string;
  severity: string;
  retryable: boolean;
  fallback_available: boolean;
  message: string;
  detail?: unknown;
  retry_after_ms?: number;
}

export function wireError(
  name: string,
  message = "",
  extra: { detail?: unknown; retry_after_ms?: number; category?: string } = {},
): WireError {
  const k = KINDS.get(name);
  if (k === undefined) throw new Error(`unknown error name ${name}`);
  const e: WireError = {
    code: k.code,
    name: k.name,
    category: extra.category ?? k.category,
    severity: k.severity,
    retryable: k.retryable,
    fallback_available: k.fallbackAvailable,
    message: message || k.summary,
  };
  if (extra.detail !== undefined && extra.detail !== null) e.detail = extra.detail;
  if (extra.retry_after_ms !== undefined) e.retry_after_ms = extra.retry_after_ms;
  return e;
}

/** Read an error body; garbage from a peer still yields a classified error (section 6). */
export function fromWire(body: unknown): WireError {
  if (typeof body !== "object" || body === null || Array.isArray(body) || body instanceof Uint8Array) {
    return wireError("bad_request", `malformed error body`);
  }
  const b = body as Record<string, unknown>;
  if (typeof b.code !== "number" || !Number.isInteger(b.code)) {
    return wireError("bad_request", `malformed error body: code is not an int`);
  }
  const known = BY_CODE.get(b.code);
  const base = wireError(known ? known.name : "internal");
  const pick = <T>(key: string, type: string, dflt: T): T => (typeof b[key] === type ? (b[key] as T) : dflt);
  const e: WireError = {
    code: b.code,
    name: pick("name", "string", base.name),
    category: pick("category", "string", base.category),
    severity: pick("severity", "string", base.severity),
    retryable: pick("retryable", "boolean", base.retryable),
    fallback_available: pick("fallback_available", "boolean", base.fallback_available),
    message: pick("message", "string", ""),
  };
  if (b.detail !== undefined && b.detail !== null) e.detail = b.detail;
  if (typeof b.retry_after_ms === "number" && Number.isInteger(b.retry_after_ms)) e.retry_after_ms = b.retry_after_ms;
  return e;
}

/** The error body as the reference encoder orders its keys (section 17). */
export function toWire(e: WireError): Record<string, unknown> {
  const out: Record<string, unknown> = {
    code: e.code,
    name: e.name,
    category: e.category,
    severity: e.severity,
    retryable: e.retryable,
    fallback_available: e.fallback_available,
    message: e.message,
  };
  if (e.detail !== undefined && e.detail !== null) out.detail = e.detail;
  if (e.retry_after_ms !== undefined) out.retry_after_ms = e.retry_after_ms;
  return out;
}

/**
 * Thrown for every failed call: an error reply, or one the client decided. `error` is what
 * travels (act on its category, severity, retryable and fallback_available, section 6).
 */
export class MoorageError extends Error {
  override readonly name = "MoorageError";
  constructor(
    readonly error: WireError,
    readonly actor = "",
    readonly op = "",
    readonly attempts = 1,
  ) {
    super(`${op ? `${actor}:${op} ` : ""}${error.name} (${error.code}): ${error.message}`);
  }
  get code(): number {
    return this.error.code;
  }
  get errorName(): string {
    return this.error.name;
  }
  get retryable(): boolean {
    return this.error.retryable;
  }
  get detail(): unknown {
    return this.error.detail;
  }
}

/** What a call that got no reply ends with; when the tree refused this client's key, that
 * refusal is the reason, and `unauthorized` replaces it (section 2, "Remote"). */
export const NO_REPLY: ReadonlySet<string> = new Set(["timeout", "outcome_unknown", "circuit_open"]);

/**
 * The error of a call that got no reply (`e`: timeout, outcome_unknown, circuit_open) while
 * the last CURVE handshake of its connection was refused by the tree's ZAP handler:
 * `unauthorized`, naming the key to allow, since a retry with the same key cannot help. Any
 * other error is returned as it is; the original message and detail are kept (an
 * outcome_unknown's "may or may not have run" still holds).
 */
export function unauthorized(e: MoorageError, publicKey: string): MoorageError {
  if (!NO_REPLY.has(e.error.name)) return e;
  const err = wireError("unauthorized",
    `the tree refused this client's key ${publicKey} at the CURVE handshake: allow it on the tree's host with ` +
    `\`moorage keys allow '${publicKey}'\`, then make a new client (this one's connection is not tried again) ` +
    `(${e.error.name}: ${e.error.message})`, { detail: e.error.detail });
  return new MoorageError(err, e.actor, e.op, e.attempts);
}

/** The errors of a call that got no reply, which may have been delivered or not. */
export const NO_REPLY_SENT: ReadonlySet<string> = new Set(["timeout", "outcome_unknown"]);

/** The error of a call that got no reply (`e`: timeout, outcome_unknown) on a socket on which no
 * handshake ever completed, now closed and its monitor read to the end: nothing of it left the
 * client, so it did not run (PROTOCOL.md section 10, "A request that never left the client"). A
 * call that may not be repeated ends `unavailable` (retryable: "not run"), never
 * `outcome_unknown`; an idempotent one keeps `timeout`, told the same. Either names the endpoint
 * and what the monitor saw: over tcp, connections that ended before their handshake mean the
 * connection file's server_key is likely stale. */
export function undelivered(e: MoorageError, endpoint: string, endedEarly: number, remote: boolean): MoorageError {
  const stale = "the connection file's server_key is likely stale (the tree's keys were remade: compare it with " +
    "`moorage keys list` on the tree's host), or what listens there is not this tree";
  const why = endedEarly > 0 ? `${endedEarly} connection(s) ended before it${remote ? `: ${stale}` : ""}`
    : remote ? "the tree is down, not reachable from here or not answering (or the connection file's server_key is " +
      "stale: compare it with `moorage keys list` on the tree's host)"
    : "the actor is not running there, or not answering";
  const told = `nothing was delivered to ${e.actor} at ${endpoint}: no connection there completed its handshake; ${why}`;
  const detail: Record<string, unknown> = { delivered: false, endpoint, ended_early: endedEarly };
  const err = e.error.name === "timeout"
    ? wireError("timeout", `${e.error.message}; ${told}`, { detail })
    : wireError("unavailable", `${e.op} did not run: ${told}`, { detail: { ...detail, instead_of: e.error.name } });
  return new MoorageError(err, e.actor, e.op, e.attempts);
}

/** A frame that cannot be taken; `requestId` is the id the error reply echoes (or null). */
export class DecodeError extends Error {
  override readonly name = "DecodeError";
  constructor(
    readonly error: WireError,
    readonly requestId: number | null = null,
  ) {
    super(`${error.name}: ${error.message}`);
  }
}
