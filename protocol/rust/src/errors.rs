//! The error taxonomy (PROTOCOL.md section 6): every failed call is an `Error` carrying a
//! classified `WireError`, whether an actor answered it or the client decided it.

use rmpv::Value;

use crate::codec::{get, map_of};

/// One row of section 6's table: code, name, category, severity, retryable, fallback, summary,
/// fault.
pub struct ErrorKind {
    pub code: i64,
    pub name: &'static str,
    pub category: &'static str,
    pub severity: &'static str,
    pub retryable: bool,
    pub fallback_available: bool,
    pub summary: &'static str,
    /// Whose the failure is: the caller's (its request cannot be) or the service's.
    pub fault: &'static str,
}

macro_rules! kinds {
    ($( ($code:expr, $name:expr, $cat:expr, $sev:expr, $retry:expr, $fb:expr, $sum:expr, $fault:expr) ),* $(,)?) => {
        pub const KINDS: &[ErrorKind] = &[
            $( ErrorKind { code: $code, name: $name, category: $cat, severity: $sev, retryable: $retry, fallback_available: $fb, summary: $sum, fault: $fault } ),*
        ];
    };
}

kinds![
    (100, "bad_request", "network", "warning", false, false, "malformed frame or header", "caller"),
    (101, "unknown_op", "caller", "warning", false, false, "the actor has no such op", "caller"),
    (102, "bad_args", "caller", "warning", false, false, "arguments missing or of wrong type", "caller"),
    (103, "unsupported_version", "network", "critical", false, false, "unknown protocol tag", "caller"),
    (104, "message_too_large", "network", "warning", false, false, "over a decoding limit", "caller"),
    (105, "bad_config", "caller", "critical", false, false, "the configuration cannot describe a tree", "caller"),
    (110, "unavailable", "network", "recoverable", true, true, "actor not answering", "service"),
    (111, "circuit_open", "network", "recoverable", true, true, "breaker open for this actor", "service"),
    (112, "outcome_unknown", "network", "critical", false, false, "may or may not have run", "service"),
    (113, "unknown_actor", "caller", "warning", false, false, "no such actor in the tree", "caller"),
    (114, "stopping", "network", "recoverable", true, false, "the actor is shutting down", "service"),
    (115, "not_running", "network", "critical", false, false, "no tree is running for this instance", "service"),
    (116, "already_running", "network", "warning", false, false, "a tree already runs for this instance", "caller"),
    (117, "start_failed", "network", "critical", false, false, "the tree could not start", "service"),
    (118, "unauthorized", "network", "critical", false, false, "the tree refused this client's key", "caller"),
    (200, "timeout", "timeout", "recoverable", true, false, "no reply before the deadline", "service"),
    (201, "deadline_expired", "timeout", "recoverable", true, false, "expired; not run", "service"),
    (300, "busy", "resource", "recoverable", true, true, "queue full or load shed; retry", "service"),
    (301, "resource_exhausted", "resource", "critical", false, true, "a hard limit was hit", "service"),
    (400, "not_found", "filesystem", "critical", false, false, "no such file or directory", "caller"),
    (401, "forbidden", "filesystem", "critical", false, false, "permission or confinement", "caller"),
    (402, "is_directory", "filesystem", "critical", false, false, "a directory, not a file", "caller"),
    (403, "no_space", "filesystem", "critical", false, false, "the device is full", "service"),
    (404, "file_too_large", "filesystem", "critical", false, false, "page the read", "caller"),
    (405, "conflict", "filesystem", "critical", false, false, "changed since the caller saw it", "caller"),
    (406, "io_error", "filesystem", "recoverable", true, true, "transient I/O failure", "service"),
    (407, "not_a_directory", "filesystem", "critical", false, false, "a file, not a dir", "caller"),
    (408, "watch_not_found", "filesystem", "warning", false, false, "no such watch", "caller"),
    (500, "session_not_found", "terminal", "warning", false, false, "no such session", "caller"),
    (501, "pty_failed", "terminal", "critical", true, true, "could not create a PTY", "service"),
    (502, "shell_exited", "terminal", "critical", true, true, "the session's shell is gone", "service"),
    (503, "exec_failed", "terminal", "recoverable", true, true, "command did not complete", "service"),
    (504, "session_busy", "terminal", "recoverable", true, false, "a command is running", "caller"),
    (600, "parse_error", "parser", "recoverable", false, true, "input could not be parsed", "service"),
    (601, "stream_not_found", "parser", "warning", false, false, "no such parser stream", "caller"),
    (602, "buffer_overflow", "parser", "critical", false, true, "partial buffer over cap", "service"),
    (603, "stream_gap", "parser", "warning", false, false, "offset skips ahead", "caller"),
    (700, "cancelled", "user_cancelled", "info", false, false, "cancelled by the caller", "caller"),
    (900, "internal", "network", "critical", false, false, "a handler raised; bug report", "service"),
];

pub fn kind(name: &str) -> Option<&'static ErrorKind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Whether an error of this name is the caller's (section 6's `fault`), as the actors count
/// theirs; a name the table lacks (a newer peer's) is the service's, the side that does not
/// flatter it.
pub fn is_caller_fault(name: &str) -> bool {
    kind(name).is_some_and(|k| k.fault == "caller")
}

pub fn kind_of_code(code: i64) -> Option<&'static ErrorKind> {
    KINDS.iter().find(|k| k.code == code)
}

/// An error as it travels: the code's classification plus this instance's message.
#[derive(Debug, Clone, PartialEq)]
pub struct WireError {
    pub code: i64,
    pub name: String,
    pub category: String,
    pub severity: String,
    pub retryable: bool,
    pub fallback_available: bool,
    pub message: String,
    pub detail: Option<Value>,
    pub retry_after_ms: Option<i64>,
}

impl WireError {
    /// The error of a known name (panics on a name not in the table: a bug here).
    pub fn of(name: &str, message: impl Into<String>) -> WireError {
        let k = kind(name).unwrap_or_else(|| panic!("unknown error name {name}"));
        let message = message.into();
        WireError {
            code: k.code,
            name: k.name.to_string(),
            category: k.category.to_string(),
            severity: k.severity.to_string(),
            retryable: k.retryable,
            fallback_available: k.fallback_available,
            message: if message.is_empty() { k.summary.to_string() } else { message },
            detail: None,
            retry_after_ms: None,
        }
    }

    pub fn with_detail(mut self, detail: Value) -> WireError {
        self.detail = if detail.is_nil() { None } else { Some(detail) };
        self
    }

    pub fn with_retry_after(mut self, ms: i64) -> WireError {
        self.retry_after_ms = Some(ms);
        self
    }

    /// Read an error body; garbage from a peer still yields a classified error.
    pub fn from_wire(body: &Value) -> WireError {
        let code = match get(body, "code").and_then(|c| c.as_i64()) {
            Some(c) if body.is_map() => c,
            _ => return WireError::of("bad_request", "malformed error body"),
        };
        let base = WireError::of(kind_of_code(code).map_or("internal", |k| k.name), "");
        let s = |key: &str, d: &str| get(body, key).and_then(|v| v.as_str()).map_or(d.to_string(), str::to_string);
        let b = |key: &str, d: bool| get(body, key).and_then(|v| v.as_bool()).unwrap_or(d);
        WireError {
            code,
            name: s("name", &base.name),
            category: s("category", &base.category),
            severity: s("severity", &base.severity),
            retryable: b("retryable", base.retryable),
            fallback_available: b("fallback_available", base.fallback_available),
            message: s("message", ""),
            detail: get(body, "detail").filter(|d| !d.is_nil()).cloned(),
            retry_after_ms: get(body, "retry_after_ms").and_then(|v| v.as_i64()),
        }
    }

    /// The body as the reference encoder orders its keys (section 17).
    pub fn to_wire(&self) -> Value {
        let mut pairs = vec![
            ("code", Value::from(self.code)),
            ("name", Value::from(self.name.as_str())),
            ("category", Value::from(self.category.as_str())),
            ("severity", Value::from(self.severity.as_str())),
            ("retryable", Value::from(self.retryable)),
            ("fallback_available", Value::from(self.fallback_available)),
            ("message", Value::from(self.message.as_str())),
        ];
        if let Some(d) = &self.detail {
            pairs.push(("detail", d.clone()));
        }
        if let Some(ms) = self.retry_after_ms {
            pairs.push(("retry_after_ms", Value::from(ms)));
        }
        map_of(pairs)
    }
}

/// A failed call (an error reply, or one the client decided): act on `error`'s category,
/// severity, retryable and fallback_available (section 6).
#[derive(Debug, Clone)]
pub struct Error {
    pub error: WireError,
    pub actor: String,
    pub op: String,
    pub attempts: u32,
}

impl Error {
    pub fn name(&self) -> &str {
        &self.error.name
    }
    pub fn code(&self) -> i64 {
        self.error.code
    }
    pub fn detail(&self) -> Option<&Value> {
        self.error.detail.as_ref()
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.op.is_empty() {
            write!(f, "{}:{} ", self.actor, self.op)?;
        }
        write!(f, "{} ({}): {}", self.error.name, self.error.code, self.error.message)
    }
}

impl std::error::Error for Error {}

/// What a call that got no reply ends with; when the tree refused this client's key, that
/// refusal is the reason, and `unauthorized` replaces it (PROTOCOL.md section 2, "Remote").
pub const NO_REPLY: &[&str] = &["timeout", "outcome_unknown", "circuit_open"];

/// The error of a call that got no reply (`e`: timeout, outcome_unknown, circuit_open) while
/// the last CURVE handshake of its connection was refused by the tree's ZAP handler:
/// `unauthorized`, naming the key to allow, since a retry with the same key cannot help. Any
/// other error is returned as it is; the original message and detail are kept (an
/// outcome_unknown's "may or may not have run" still holds).
pub fn unauthorized(e: Error, public_key: &str) -> Error {
    if !NO_REPLY.contains(&e.error.name.as_str()) {
        return e;
    }
    let mut error = WireError::of("unauthorized", format!(
        "the tree refused this client's key {public_key} at the CURVE handshake: allow it on the tree's host with \
         `moorage keys allow '{public_key}'`, then make a new client (this one's connection is not \
         tried again) ({}: {})", e.error.name, e.error.message));
    error.detail = e.error.detail;
    Error { error, ..e }
}

/// The error of a call that got no reply (`e`: timeout, outcome_unknown) on a socket on which
/// no handshake ever completed, now closed and its monitor read to the end: nothing of it left
/// the client, so it did not run (PROTOCOL.md section 10, "A request that never left the
/// client"). A call that may not be repeated ends `unavailable` (retryable: "not run"), never
/// `outcome_unknown`; an idempotent one keeps `timeout`, told the same. Either names the
/// endpoint and what the monitor saw: over tcp, connections that ended before their handshake
/// mean the connection file's server_key is likely stale.
pub fn undelivered(e: Error, endpoint: &str, ended_early: u32, remote: bool) -> Error {
    let stale = "the connection file's server_key is likely stale (the tree's keys were remade: compare it with \
                 `moorage keys list` on the tree's host), or what listens there is not this tree";
    let why = if ended_early > 0 {
        format!("{ended_early} connection(s) ended before it{}", if remote { format!(": {stale}") } else { String::new() })
    } else if remote {
        "the tree is down, not reachable from here or not answering (or the connection file's server_key is stale: \
         compare it with `moorage keys list` on the tree's host)".to_string()
    } else {
        "the actor is not running there, or not answering".to_string()
    };
    let told = format!("nothing was delivered to {} at {endpoint}: no connection there completed its handshake; {why}", e.actor);
    let mut detail = vec![
        (Value::from("delivered"), Value::from(false)),
        (Value::from("endpoint"), Value::from(endpoint)),
        (Value::from("ended_early"), Value::from(ended_early)),
    ];
    let error = if e.error.name == "timeout" {
        WireError::of("timeout", format!("{}; {told}", e.error.message))
    } else {
        detail.push((Value::from("instead_of"), Value::from(e.error.name.as_str())));
        WireError::of("unavailable", format!("{} did not run: {told}", e.op))
    };
    Error { error: error.with_detail(Value::Map(detail)), ..e }
}

/// A frame that cannot be taken; `request_id` is the id its error reply echoes.
#[derive(Debug, Clone)]
pub struct DecodeError {
    pub error: WireError,
    pub request_id: Option<u64>,
}

impl DecodeError {
    pub fn new(name: &str, message: impl Into<String>, request_id: Option<u64>) -> DecodeError {
        DecodeError { error: WireError::of(name, message), request_id }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error.name, self.error.message)
    }
}

impl std::error::Error for DecodeError {}
