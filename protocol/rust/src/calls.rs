//! Every decision of a call, none of its I/O (PROTOCOL.md sections 9-11): the id kept across
//! retries (the actor's reply cache answers a retry without running it again), the deadline,
//! what to do on a reply, a timeout, a dropped connection, a new epoch or a refused key, and
//! the breaker.
//!
//! A non-idempotent call may have run, so in remote mode it is resent only *pinned* to the
//! actor life it went to (the header's `ep`, section 10): that life answers it once (its
//! reply cache, or the run it joins, or it runs it if it never arrived) and a successor
//! refuses it `outcome_unknown`. On ipc a drop is the actor's end, and such a call fails at
//! once, as it does when no epoch was known at its first send. A *resumable* op (its actor's
//! sys.info says so, like term.exec) is answered by any successor of the actor under the same
//! id, so on a drop or a new epoch it is resent freely, never pinned.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use rmpv::Value;

use crate::codec::{get, map_of};
use crate::envelope::{encode_request, pin_request, Reply};
use crate::errors::{is_caller_fault, Error, WireError};
use crate::known_ops::SCHEMA_IDEMPOTENT;
use crate::limits::MAX_MESSAGE_SIZE;
use crate::recovery::{max_retries_for, Backoff, BreakerState, CircuitBreaker};

/// Ops every actor serves that are safe to repeat, whatever it says (sys.info among them:
/// learning never waits on learning); section 10.
pub const BUILTIN_IDEMPOTENT: &[&str] = &["sys.ping", "sys.hello", "sys.info", "replay"];

/// Is `op` safe to repeat (section 10)? A built-in, one the client was configured with, or one
/// the actor's sys.info said (`learned`); until the actor has told, one the schema declares
/// (`known_ops`), so that a read-only call to an actor that cannot answer its sys.info now
/// (stopped, restarting, crash-looping) is resent and ends `timeout`, never `outcome_unknown`.
/// The actor's own table wins once learned: another build, or an actor outside the default
/// tree serving an op of the same name, may say otherwise.
pub fn known_idempotent(op: &str, learned: Option<&HashSet<String>>, configured: &HashSet<String>) -> bool {
    BUILTIN_IDEMPOTENT.contains(&op) || configured.contains(op)
        || learned.map_or_else(|| SCHEMA_IDEMPOTENT.contains(&op), |s| s.contains(op))
}

/// Error replies meaning "not run, and it may run later": resent whatever the op.
pub const NOT_RUN: &[&str] = &["busy", "stopping", "session_busy"];
/// Of those, the refusals an op answers itself (before it ran anything): the actor's reply
/// cache keeps an op's answers under the request's id (only the runtime's own refusals are left
/// out), so the same frames would only hear the refusal again. Such a call is resent as a new
/// request: a fresh id under the same deadline (the refused id ran nothing).
pub const RENEWED: &[&str] = &["session_busy"];
/// A call given no timeout waits for its op's declared `timeout_ms` plus this (the way there
/// and back), never longer than MAX_OP_TIMEOUT (an op declaring a day, as term.exec does,
/// bounds its own work with an argument instead); seconds (section 9).
pub const TRIP_MARGIN: f64 = 0.5;
pub const MAX_OP_TIMEOUT: f64 = 60.0;
/// The matrix's Timeout row: timed-out attempts of an idempotent call resent at most this often.
pub const TIMEOUT_RETRIES: u32 = 2;
/// Ops whose `session` argument goes into an early failure's detail.
const SESSION_OPS: &[&str] = &["term.exec", "term.create"];

#[derive(Debug, Clone, Copy)]
pub struct PlanSettings {
    pub timeout: f64,
    pub attempt_timeout: f64,
    pub backoff: Backoff,
    /// Over tcp (remote mode) a link may drop under a live actor, so a call that may have run
    /// is resent pinned; on ipc a connection drops only when the actor's process ends.
    pub remote: bool,
}

/// A tree a client found (by instance, or from a connection file), seen ended: its instance
/// lock free (`Client::tree_gone`). `since`: when a look at the lock first found it so, on
/// the client's clock (a call begun after it can have reached no tree); `dir`: its directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnded {
    pub since: f64,
    pub dir: PathBuf,
}

impl TreeEnded {
    /// What a call to it ends with when no tree received the call (in the Python client's
    /// words).
    pub fn not_running(&self) -> WireError {
        WireError::of("not_running", format!(
            "the moorage tree in {} has ended (its instance lock is free); start one with `moorage up`", self.dir.display()))
    }
}

/// Why a call's frames carry `ep`: its connection dropped, or an attempt got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    Drop,
    Timeout,
}

#[derive(Debug)]
pub enum Verdict {
    Done(Result<Reply, Error>),
    Resend(f64),
    Wait(f64),
}

/// Seconds of wall-clock time since 1970, for `deadline_ms`.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub struct CallPlan {
    /// The id its replies come under: a new one when it is resent as a new request (`renew`).
    pub id: u64,
    /// Its first id, under which the client files its outcome.
    pub key: u64,
    /// Its next resend is a new request (a refusal in RENEWED answered it): see `renew`.
    pub renewing: bool,
    pub actor: String,
    pub op: String,
    pub idempotent: bool,
    /// Its actor answers it from any life under the same id (section 10, "Resumable ops"):
    /// resent on a drop or a new epoch as an idempotent op is, never pinned.
    pub resumable: bool,
    pub session: Option<String>,
    pub started: f64,
    pub timeout: f64,
    pub deadline: f64,
    pub deadline_ms: i64,
    pub frames: Vec<Vec<u8>>,
    pub attempts: u32,
    pub retries: u32,
    pub timeout_retries: u32,
    pub last_error: Option<WireError>,
    /// The actor link's generation when this was last sent (section 10, early failure).
    pub generation: u64,
    /// The actor life this call went to at its first send, which its resends are pinned to;
    /// None: resent never (not known, or not remote) or freely (idempotent, or resumable: any
    /// successor answers those). Never changed.
    pub pin: Option<String>,
    pub pinned_by: Option<Pinned>,
    pub finished: bool,
    settings: PlanSettings,
    /// The call's end-to-end time and outcome, once: (micros, ok, caller), `caller` when it
    /// failed with an error that is the caller's by the error table (as the actors count theirs).
    pub recorded: Option<(u64, bool, bool)>,
}

impl CallPlan {
    #[allow(clippy::too_many_arguments)]
    pub fn new(id: u64, sid: &str, actor: &str, op: &str, args: &Value, args_bytes: Vec<u8>, idempotent: bool,
               settings: PlanSettings, timeout: Option<f64>, attachments: &[Vec<u8>], now: f64) -> CallPlan {
        let timeout = timeout.unwrap_or(settings.timeout);
        let deadline_ms = unix_ms() + (timeout * 1000.0) as i64;
        let session = if SESSION_OPS.contains(&op) {
            get(args, "session").and_then(|s| s.as_str()).map(str::to_string)
        } else {
            None
        };
        CallPlan {
            id,
            key: id,
            renewing: false,
            actor: actor.to_string(),
            op: op.to_string(),
            idempotent,
            resumable: false,
            session,
            started: now,
            timeout,
            deadline: now + timeout,
            deadline_ms,
            frames: encode_request(id, sid, op, &args_bytes, Some(deadline_ms), attachments),
            attempts: 0,
            retries: 0,
            timeout_retries: 0,
            last_error: None,
            generation: 0,
            pin: None,
            pinned_by: None,
            finished: false,
            settings,
            recorded: None,
        }
    }

    /// What the actor's sys.info said of the op (`learned_ops`): resumable or not.
    pub fn with_resumable(mut self, resumable: bool) -> CallPlan {
        self.resumable = resumable;
        self
    }

    fn error(&self, e: WireError) -> Error {
        Error { error: e, actor: self.actor.clone(), op: self.op.clone(), attempts: self.attempts }
    }

    pub fn done(&mut self, now: f64, outcome: Result<Reply, WireError>) -> Verdict {
        self.finished = true;
        let ok = matches!(&outcome, Ok(r) if r.ok);
        let caller = matches!(&outcome, Err(e) if is_caller_fault(&e.name));
        self.recorded = Some((((now - self.started) * 1e6).max(0.0) as u64, ok, caller));
        Verdict::Done(outcome.map_err(|e| self.error(e)))
    }

    /// Resent as a new request (`renewing`): under `id`, with the same deadline, not pinned
    /// (the refused id ran nothing, so no life holds an effect of it), and pinned from then
    /// on to `epoch`, the life known now, as a first send is. Only the header changes.
    pub fn renew(&mut self, id: u64, sid: &str, epoch: Option<&str>) {
        self.id = id;
        self.renewing = false;
        self.frames[1] = encode_request(id, sid, &self.op, &[], Some(self.deadline_ms), &[]).swap_remove(1);
        self.pinned_by = None;
        if self.settings.remote && !self.idempotent && !self.resumable {
            self.pin = epoch.map(str::to_string);
        }
    }

    /// A frame no actor takes: its socket drops the connection on one over MAXMSGSIZE, which
    /// would end the call outcome_unknown although it cannot have run. Not sent.
    fn too_large(&self) -> Option<WireError> {
        let big = self.frames[2..].iter().map(Vec::len).max().filter(|&n| n > MAX_MESSAGE_SIZE)?;
        Some(WireError::of("message_too_large", format!(
            "a frame of {big} bytes, over the {MAX_MESSAGE_SIZE} an actor takes (MAXMSGSIZE): not sent")))
    }

    /// Before the first send: the breaker may refuse at once. `epoch`: the actor's as known
    /// now, the life this call goes to.
    pub fn start(&mut self, now: f64, br: &mut CircuitBreaker, epoch: Option<&str>) -> Verdict {
        if let Some(e) = self.too_large() {
            return self.done(now, Err(e));
        }
        if self.settings.remote && !self.idempotent && !self.resumable {
            self.pin = epoch.map(str::to_string);
        }
        if br.state != BreakerState::Closed && !br.allow(now) {
            let e = WireError::of("circuit_open", format!("{}: breaker {}", self.actor, state_name(br.state)))
                .with_retry_after(refusal_retry_after_ms(br, now));
            return self.done(now, Err(e));
        }
        self.attempts += 1;
        Verdict::Wait(self.attempt_deadline(now))
    }

    pub fn attempt_timeout(&self) -> f64 {
        self.settings.attempt_timeout * 2f64.powi(self.timeout_retries as i32)
    }

    /// A pinned call gets attempts as an idempotent one does (its life answers a resend once);
    /// the last of either lasts to the deadline (an op that is slow, not lost, answers late:
    /// any copy's reply ends the call).
    pub fn attempt_deadline(&self, now: f64) -> f64 {
        if (self.idempotent || self.pin.is_some()) && self.timeout_retries < TIMEOUT_RETRIES {
            self.deadline.min(now + self.attempt_timeout())
        } else {
            self.deadline
        }
    }

    pub fn on_reply(&mut self, reply: Reply, now: f64, br: &mut CircuitBreaker, unit: f64) -> Verdict {
        if br.failures > 0 || br.state != BreakerState::Closed {
            br.record_success();
        }
        if reply.ok {
            return self.done(now, Ok(reply));
        }
        let mut err = WireError::from_wire(&reply.body);
        if self.pinned_by == Some(Pinned::Drop) && err.name == "outcome_unknown" {
            // (the life that answered says why; the caller hears first what happened here)
            err = WireError::of("outcome_unknown", format!("{}'s connection dropped while {} was in flight; {}", self.actor, self.op, err.message))
                .with_detail(self.unknown_detail(err.detail.as_ref(), None));
        }
        self.last_error = Some(err.clone());
        let may_retry = NOT_RUN.contains(&err.name.as_str()) || (self.idempotent && err.retryable);
        if may_retry && self.retries < max_retries_for(&err) {
            let mut delay = self.settings.backoff.delay(self.retries, unit);
            if let Some(ms) = err.retry_after_ms {
                delay = delay.max(ms as f64 / 1000.0);
            }
            if now + delay < self.deadline {
                self.retries += 1;
                self.renewing = RENEWED.contains(&err.name.as_str());
                return Verdict::Resend(delay);
            }
        }
        self.done(now, Err(err))
    }

    pub fn on_timeout(&mut self, now: f64, br: &mut CircuitBreaker, unit: f64) -> Verdict {
        br.record_failure(now);
        self.last_error = None; // (the last attempt was not answered)
        if now >= self.deadline {
            let e = if self.idempotent {
                WireError::of("timeout", format!("no reply in {}s ({} attempts)", self.timeout, self.attempts))
            } else {
                WireError::of("outcome_unknown", format!("no reply in {}s; the request may or may not have run", self.timeout))
            };
            return self.done(now, Err(e));
        }
        if !self.idempotent {
            if self.pin.is_none() {
                return self.done(now, Err(WireError::of("outcome_unknown", "no reply")));
            }
            // Lost on the way, or still running: either way its life answers the pinned
            // frames once (the reply cache, or the run it joins).
            self.pin_frames(Pinned::Timeout);
            self.retries += 1;
            self.timeout_retries += 1;
            return Verdict::Resend(0.0);
        }
        self.retries += 1;
        self.timeout_retries += 1;
        Verdict::Resend(self.settings.backoff.delay(self.retries - 1, unit).min((self.deadline - now).max(0.0)))
    }

    /// The actor this was sent to is gone (section 10, early failure on a dead actor).
    /// An idempotent or resumable call is resent at once (a successor answers a resumable one
    /// under the same id). A drop under a pinned call resends it: over tcp the actor may live
    /// on. A new epoch ends it, since the successor would refuse the pinned frames anyway.
    pub fn on_actor_gone(&mut self, now: f64, old_epoch: Option<&str>, new_epoch: Option<&str>) -> Verdict {
        self.last_error = None; // (the last attempt was not answered)
        if self.idempotent || self.resumable {
            return Verdict::Resend(0.0);
        }
        if new_epoch.is_none() && self.pin.is_some() {
            self.pin_frames(Pinned::Drop);
            return Verdict::Resend(0.0);
        }
        let ep = |e: Option<&str>| e.map_or(Value::Nil, Value::from);
        let mut detail = vec![("old_epoch", ep(old_epoch)), ("new_epoch", ep(new_epoch))];
        if let Some(s) = &self.session {
            detail.push(("session", Value::from(s.as_str())));
        }
        let what = match new_epoch {
            None => "dropped its connection".to_string(),
            Some(e) => format!("restarted (epoch {e})"),
        };
        let e = WireError::of("outcome_unknown", format!("{} {} while {} was in flight; it may or may not have run", self.actor, what, self.op))
            .with_detail(map_of(detail));
        self.done(now, Err(e))
    }

    /// Instead of `start`, once the client has seen its tree ended (`ended`) and a look at
    /// the lock finds no tree holding the instance again: nothing can answer, and a call not
    /// safe to repeat would wait its whole budget, so it ends `not_running` now, unsent (a
    /// frame no actor takes is still told `message_too_large`, as `start` tells it).
    pub fn start_on_ended_tree(&mut self, now: f64, ended: &TreeEnded) -> Verdict {
        let e = self.too_large().unwrap_or_else(|| ended.not_running());
        self.done(now, Err(e))
    }

    /// The tree this call's client found (by instance, or from a connection file) has ended
    /// (`ended`), its instance lock free, when an attempt went unanswered or the connection
    /// dropped: that tree will not answer, so the call ends now, not at its whole budget.
    /// `not_running` for a call safe to repeat (idempotent or resumable), or begun after the
    /// client first saw the tree ended (no tree received it); one not safe to repeat that was
    /// under way before may have run there before it ended: `outcome_unknown`, as it would be
    /// at its deadline (`epoch`: the actor's as the client knew it, for the detail). Asked
    /// instead of `on_timeout` (before the breaker hears of it: the actor did not fail, and the
    /// next call is told `not_running` too, not `circuit_open`) or of `on_actor_gone` on a drop
    /// (whose breaker the client gave back). A client given a directory (it waits for a tree
    /// to come up there) or a remote one never asks it.
    pub fn on_tree_gone(&mut self, now: f64, ended: &TreeEnded, epoch: Option<&str>) -> Verdict {
        self.last_error = None; // (the last attempt was not answered)
        if self.idempotent || self.resumable || self.started >= ended.since {
            return self.done(now, Err(ended.not_running()));
        }
        let e = WireError::of("outcome_unknown", format!(
            "the moorage tree in {} ended while {} was in flight; it may or may not have run", ended.dir.display(), self.op))
            .with_detail(self.unknown_detail(None, epoch));
        self.done(now, Err(e))
    }

    /// The tree refused this client's key at the CURVE handshake while the call waited (remote
    /// mode): no attempt with this key can reach the actor, so the call ends now, not at its
    /// deadline (the client names it `unauthorized`). A non-idempotent one may have run on a
    /// connection made before the key was revoked: `outcome_unknown`.
    pub fn on_refused(&mut self, now: f64, br: &mut CircuitBreaker) -> Verdict {
        br.give_back();
        let name = if self.idempotent { "timeout" } else { "outcome_unknown" };
        let e = WireError::of(name, format!("no reply: the tree refused this client's key ({} attempts)", self.attempts));
        self.done(now, Err(e))
    }

    /// From now on the frames carry `ep`: only the life they may have run in may take them.
    fn pin_frames(&mut self, why: Pinned) {
        if let (None, Some(pin)) = (self.pinned_by, &self.pin) {
            self.frames = pin_request(&self.frames, pin).expect("a header encode_request made decodes");
            self.pinned_by = Some(why);
        }
    }

    /// An outcome_unknown detail: the epoch it went to (its pin, else `heard`: the actor's as
    /// the client knew it), none answered here, its id and the session it names; what the
    /// actor `told` is kept over these.
    fn unknown_detail(&self, told: Option<&Value>, heard: Option<&str>) -> Value {
        let mut pairs = vec![
            (Value::from("old_epoch"), self.pin.as_deref().or(heard).map_or(Value::Nil, Value::from)),
            (Value::from("new_epoch"), Value::Nil),
            (Value::from("request_id"), Value::from(self.id)),
        ];
        // (a key set again keeps its place, as in the reference client's dict)
        let put = |pairs: &mut Vec<(Value, Value)>, k: Value, v: Value| match pairs.iter_mut().find(|(have, _)| *have == k) {
            Some((_, old)) => *old = v,
            None => pairs.push((k, v)),
        };
        for (k, v) in told.and_then(Value::as_map).into_iter().flatten() {
            put(&mut pairs, k.clone(), v.clone());
        }
        if let Some(s) = &self.session {
            put(&mut pairs, Value::from("session"), Value::from(s.as_str()));
        }
        Value::Map(pairs)
    }

    /// Send again, if the breaker lets it. A pinned resend is not new work for the actor: the
    /// breaker does not gate it. This call was sent, so a refusal ends it with its own
    /// outcome, never `circuit_open` ("not sent"): the error its last attempt was answered
    /// with (busy, a retryable error), else, its last attempt unanswered, `timeout`
    /// (idempotent) or `outcome_unknown` (it may have run: a resumable call whose connection
    /// dropped).
    pub fn resend(&mut self, now: f64, br: &mut CircuitBreaker) -> Verdict {
        if self.pinned_by.is_none() && !br.allow(now) {
            if let Some(e) = self.last_error.clone() {
                return self.done(now, Err(e));
            }
            let why = format!("not sent again: {}'s breaker is {} ({} attempts in {:.3}s)", self.actor, state_name(br.state), self.attempts, now - self.started);
            let e = if self.idempotent {
                WireError::of("timeout", format!("no reply; {why}"))
            } else {
                WireError::of("outcome_unknown", format!("no reply; the request may or may not have run; {why}"))
                    .with_detail(self.unknown_detail(None, None))
            };
            return self.done(now, Err(e));
        }
        self.attempts += 1;
        Verdict::Wait(self.attempt_deadline(now))
    }
}

/// The `retry_after_ms` of a call the breaker refused before its first send (PROTOCOL.md
/// section 11): while open, the cooldown left; while half-open (its probe is out), the
/// breaker's current cooldown, by when the probe has most likely closed it or opened it again.
/// Never 0: a caller that honours it must not retry in a tight loop.
pub fn refusal_retry_after_ms(br: &CircuitBreaker, now: f64) -> i64 {
    let left = if br.state == BreakerState::Open { br.retry_after(now) } else { br.cooldown };
    ((left * 1000.0).ceil() as i64).max(1)
}

fn state_name(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

/// What an actor's sys.info reply says of its ops (section 10): the idempotent ones and the
/// resumable ones (`ops.<name>.idempotent` / `.resumable` true). Anything else says nothing.
pub fn learned_ops(info: &Value) -> (HashSet<String>, HashSet<String>) {
    let with = |flag: &str| -> HashSet<String> {
        get(info, "ops").and_then(Value::as_map).into_iter().flatten()
            .filter(|(_, d)| matches!(get(d, flag), Some(Value::Boolean(true))))
            .filter_map(|(k, _)| k.as_str().map(str::to_string)).collect()
    };
    (with("idempotent"), with("resumable"))
}

/// Each op's declared timeout in seconds, from a sys.info reply (`ops.<name>.timeout_ms`, a
/// positive integer; anything else is left out: the op's calls get the client's timeout).
pub fn declared_timeouts(info: &Value) -> HashMap<String, f64> {
    get(info, "ops").and_then(Value::as_map).into_iter().flatten()
        .filter_map(|(k, d)| {
            let ms = get(d, "timeout_ms").and_then(Value::as_u64).filter(|ms| *ms > 0)?;
            Some((k.as_str()?.to_string(), ms as f64 / 1000.0))
        })
        .collect()
}

/// The time of a call given none (section 9): its op's declared timeout (seconds, as sys.info
/// said it; None: not known) plus TRIP_MARGIN, at most MAX_OP_TIMEOUT, when that is longer
/// than the client's; else the client's (no call ends sooner than the client was told).
pub fn call_timeout(declared: Option<f64>, client_timeout: f64) -> f64 {
    declared.map_or(client_timeout, |d| (d + TRIP_MARGIN).min(MAX_OP_TIMEOUT).max(client_timeout))
}

/// One actor as the client knows it: the epoch recorded, the generation (a drop or a new
/// epoch each start one), and which calls are in flight in which generation. Pure.
#[derive(Debug, Default)]
pub struct ActorLink {
    pub epoch: Option<String>,
    pub generation: u64,
    pub restarts_seen: u32,
    /// Call id -> the generation it was last sent in.
    pub in_flight: HashMap<u64, u64>,
    dropped_since_epoch: bool,
}

/// What a change does to a call in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub id: u64,
    pub old_epoch: Option<String>,
    pub new_epoch: Option<String>,
}

impl ActorLink {
    pub fn new(epoch: Option<String>) -> ActorLink {
        ActorLink { epoch, ..ActorLink::default() }
    }

    pub fn sent(&mut self, id: u64) {
        self.in_flight.insert(id, self.generation);
    }

    pub fn finished(&mut self, id: u64) {
        self.in_flight.remove(&id);
    }

    /// The DEALER's monitor saw the connection drop: the calls sent before it, to act on.
    pub fn on_disconnect(&mut self) -> Vec<Change> {
        self.generation += 1;
        self.dropped_since_epoch = true;
        let old = self.epoch.clone();
        self.change(old, None)
    }

    /// A reply or hello carried `epoch`; a change affects what was sent before it.
    pub fn on_epoch(&mut self, epoch: &str) -> Vec<Change> {
        if epoch.is_empty() {
            return vec![];
        }
        if self.epoch.as_deref() == Some(epoch) {
            self.same_epoch();
            return vec![];
        }
        let old = self.epoch.replace(epoch.to_string());
        if old.is_none() {
            return vec![];
        }
        self.restarts_seen += 1;
        if self.dropped_since_epoch {
            self.dropped_since_epoch = false;
            return vec![];
        }
        self.generation += 1;
        self.change(old, Some(epoch.to_string()))
    }

    /// A reply carried the recorded epoch: the life that answered before a drop answers after
    /// it, so that drop was no restart (a link dropped under a live actor), and a new epoch
    /// heard later is a change again.
    pub fn same_epoch(&mut self) {
        self.dropped_since_epoch = false;
    }

    fn change(&mut self, old: Option<String>, new: Option<String>) -> Vec<Change> {
        let mut ids: Vec<u64> = self.in_flight.iter().filter(|(_, g)| **g < self.generation).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.into_iter().map(|id| Change { id, old_epoch: old.clone(), new_epoch: new.clone() }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode_reply, decode_request, encode_error, encode_reply};

    const EP: &str = "5eed0f1ce0ffee00";
    const SUCCESSOR: &str = "0123456789abcdef";

    fn plan(op: &str, idempotent: bool, remote: bool) -> CallPlan {
        let settings = PlanSettings { timeout: 30.0, attempt_timeout: 1.0, backoff: Backoff::default(), remote };
        CallPlan::new(7, "4242-1f2e3d4c5b6a", "alpha", op, &Value::Nil, vec![0xc0], idempotent, settings, None, &[], 0.0)
    }

    fn wait(v: Verdict) -> f64 {
        match v {
            Verdict::Wait(until) => until,
            v => panic!("not a wait: {v:?}"),
        }
    }

    fn failed(v: Verdict) -> Error {
        match v {
            Verdict::Done(Err(e)) => e,
            v => panic!("not a failure: {v:?}"),
        }
    }

    fn resent_at_once(v: Verdict) {
        assert!(matches!(v, Verdict::Resend(d) if d == 0.0), "not resent at once: {v:?}");
    }

    fn pinned_to(p: &CallPlan) -> Option<String> {
        decode_request(&p.frames).unwrap().epoch
    }

    fn refusal(ep: &str, detail: Value) -> Reply {
        let e = WireError::of("outcome_unknown", "alpha restarted since the first attempt of fake.held").with_detail(detail);
        decode_reply(&encode_error(Some(7), ep, &e)).unwrap()
    }

    #[test]
    fn a_remote_call_that_may_have_run_is_resent_pinned_on_a_drop_past_an_open_breaker() {
        let mut br = CircuitBreaker::new(1, 0.5);
        let mut p = plan("fake.held", false, true);
        assert_eq!(wait(p.start(0.0, &mut br, Some(EP))), 1.0); // a pinned call's first attempt
        let first = p.frames.clone();
        br.record_failure(0.1); // open: a new call would not be sent
        resent_at_once(p.on_actor_gone(0.2, Some(EP), None));
        assert_eq!(pinned_to(&p).as_deref(), Some(EP));
        assert_eq!((&p.frames[0], &p.frames[2..]), (&first[0], &first[2..]));
        assert_eq!(decode_request(&p.frames).unwrap(), crate::envelope::Request { epoch: Some(EP.into()), ..decode_request(&first).unwrap() });
        assert_eq!(wait(p.resend(0.2, &mut br)), 1.2); // not gated by the breaker
        let pinned = p.frames.clone();
        resent_at_once(p.on_actor_gone(0.3, Some(EP), None)); // each drop resends the same frames
        assert_eq!(p.frames, pinned);
        wait(p.resend(0.3, &mut br));
        assert_eq!(p.attempts, 3);
        // The successor refuses it: the caller hears first that the connection dropped.
        let told = map_of([("old_epoch", Value::from(EP)), ("new_epoch", Value::from(SUCCESSOR)), ("request_id", Value::from(7))]);
        let e = failed(p.on_reply(refusal(SUCCESSOR, told.clone()), 0.4, &mut br, 0.5));
        assert_eq!(e.error.name, "outcome_unknown");
        assert!(e.error.message.starts_with("alpha's connection dropped while fake.held was in flight; alpha restarted"), "{}", e.error.message);
        assert_eq!(e.error.detail, Some(told));
    }

    #[test]
    fn the_life_that_ran_it_answers_a_pinned_resend_once() {
        let mut br = CircuitBreaker::new(5, 0.5);
        let mut p = plan("fake.held", false, true);
        p.start(0.0, &mut br, Some(EP));
        resent_at_once(p.on_actor_gone(0.1, Some(EP), None));
        p.resend(0.1, &mut br);
        let reply = decode_reply(&encode_reply(Some(7), EP, &map_of([("effects", Value::from(1))]), &[])).unwrap();
        assert!(matches!(p.on_reply(reply, 0.2, &mut br, 0.5), Verdict::Done(Ok(r)) if r.ok));
    }

    #[test]
    fn on_ipc_or_with_no_epoch_known_a_drop_ends_such_a_call_at_once() {
        let mut br = CircuitBreaker::new(5, 0.5);
        for (remote, epoch) in [(false, Some(EP)), (true, None)] {
            let mut p = plan("fake.held", false, remote);
            assert_eq!(wait(p.start(0.0, &mut br, epoch)), 30.0); // one attempt, to the deadline
            let first = p.frames.clone();
            let e = failed(p.on_actor_gone(0.1, epoch, None));
            assert_eq!(e.error.name, "outcome_unknown");
            assert!(e.error.message.contains("may or may not have run"));
            assert_eq!(p.frames, first);
        }
        let mut ping = plan("sys.ping", true, true); // safe to repeat: resent as it was
        ping.start(0.0, &mut br, Some(EP));
        resent_at_once(ping.on_actor_gone(0.1, Some(EP), None));
        assert_eq!((ping.pin.as_deref(), pinned_to(&ping)), (None, None));
    }

    #[test]
    fn a_new_epoch_ends_a_pinned_call_at_once() {
        let mut br = CircuitBreaker::new(5, 0.5);
        let mut p = plan("fake.held", false, true);
        p.start(0.0, &mut br, Some(EP));
        let e = failed(p.on_actor_gone(0.1, Some(EP), Some(SUCCESSOR))); // its successor would refuse it
        assert_eq!(e.error.name, "outcome_unknown");
        assert_eq!(pinned_to(&p), None);
    }

    #[test]
    fn an_idempotent_call_s_last_attempt_waits_for_its_deadline() {
        // (it ended `timeout` after its ladder, whatever its own timeout)
        let mut br = CircuitBreaker::new(100, 0.5);
        let mut p = plan("fake.read", true, false);
        assert_eq!(wait(p.start(0.0, &mut br, None)), 1.0);
        let mut at = 1.0;
        for n in 1..=TIMEOUT_RETRIES {
            match p.on_timeout(at, &mut br, 0.5) {
                Verdict::Resend(delay) => at += delay,
                other => panic!("attempt {n}: {other:?}"),
            }
            let until = wait(p.resend(at, &mut br));
            if n < TIMEOUT_RETRIES {
                assert!((until - (at + 2f64.powi(n as i32))).abs() < 1e-9, "attempt {n}: {until}");
            } else {
                assert_eq!(until, 30.0);
            }
            at = until;
        }
        let e = failed(p.on_timeout(30.0, &mut br, 0.5));
        assert_eq!(e.error.name, "timeout");
    }

    #[test]
    fn a_pinned_call_gets_the_timeout_ladder_then_waits_for_its_deadline() {
        let mut br = CircuitBreaker::new(1, 0.5);
        let mut p = plan("fake.held", false, true);
        assert_eq!(wait(p.start(0.0, &mut br, Some(EP))), 1.0);
        resent_at_once(p.on_timeout(1.0, &mut br, 0.5));
        assert_eq!((p.pinned_by, pinned_to(&p).as_deref()), (Some(Pinned::Timeout), Some(EP)));
        assert_eq!(br.state, BreakerState::Open); // the timeout counted; the resend is not gated
        assert_eq!(wait(p.resend(1.0, &mut br)), 3.0); // doubled
        resent_at_once(p.on_timeout(3.0, &mut br, 0.5));
        assert_eq!(wait(p.resend(3.0, &mut br)), 30.0); // TIMEOUT_RETRIES resends: then the deadline
        assert_eq!((p.attempts, p.timeout_retries), (3, TIMEOUT_RETRIES));
        let e = failed(p.on_timeout(30.0, &mut br, 0.5));
        assert_eq!(e.error.name, "outcome_unknown");
        assert!(e.error.message.starts_with("no reply in 30s"), "{}", e.error.message);
    }

    #[test]
    fn a_refusal_answering_a_resend_pinned_by_a_timeout_is_the_actors_own() {
        let mut br = CircuitBreaker::new(5, 0.5);
        let mut p = plan("fake.held", false, true);
        p.start(0.0, &mut br, Some(EP));
        resent_at_once(p.on_timeout(1.0, &mut br, 0.5));
        p.resend(1.0, &mut br);
        resent_at_once(p.on_actor_gone(1.1, Some(EP), None)); // a drop after: pinned already
        assert_eq!(p.pinned_by, Some(Pinned::Timeout));
        let e = failed(p.on_reply(refusal(SUCCESSOR, Value::Nil), 1.2, &mut br, 0.5));
        assert!(e.error.message.starts_with("alpha restarted"), "{}", e.error.message);
    }

    #[test]
    fn a_frame_over_what_an_actor_takes_is_refused_unsent() {
        let mut br = CircuitBreaker::new(5, 0.5);
        let settings = PlanSettings { timeout: 30.0, attempt_timeout: 1.0, backoff: Backoff::default(), remote: false };
        let big = vec![vec![0u8; MAX_MESSAGE_SIZE + 1]];
        let mut p = CallPlan::new(7, "4242-1f2e3d4c5b6a", "alpha", "fake.effect", &Value::Nil, vec![0xc0], false, settings, None, &big, 0.0);
        let e = failed(p.start(0.0, &mut br, Some(EP)));
        assert_eq!((e.error.name.as_str(), p.attempts), ("message_too_large", 0), "{}", e.error.message);
        assert!(e.error.message.contains(&(MAX_MESSAGE_SIZE + 1).to_string()), "{}", e.error.message);
        assert_eq!(br.state, BreakerState::Closed);
    }

    #[test]
    fn an_ipc_call_that_may_have_run_still_waits_one_attempt_to_its_deadline() {
        let mut br = CircuitBreaker::new(5, 0.5);
        let mut p = plan("fake.held", false, false);
        p.start(0.0, &mut br, Some(EP));
        let e = failed(p.on_timeout(30.0, &mut br, 0.5));
        assert_eq!(e.error.name, "outcome_unknown");
        assert_eq!(p.attempts, 1);
    }

    #[test]
    fn a_refused_key_ends_a_call_at_once_and_gives_back_its_probe() {
        let mut br = CircuitBreaker::new(1, 0.5);
        br.record_failure(0.0);
        let mut p = plan("fake.held", false, true);
        wait(p.start(1.0, &mut br, Some(EP))); // half-open: the probe
        assert_eq!(failed(plan("fake.work", false, true).start(1.0, &mut br, Some(EP))).error.name, "circuit_open");
        let e = failed(p.on_refused(1.01, &mut br));
        assert_eq!(e.error.name, "outcome_unknown"); // it may have run before the key was revoked
        assert_eq!(e.error.message, "no reply: the tree refused this client's key (1 attempts)");
        wait(plan("fake.work", false, true).start(1.02, &mut br, Some(EP))); // the probe is free again
        let mut ping = plan("sys.ping", true, true);
        br.record_success();
        ping.start(2.0, &mut br, Some(EP));
        assert_eq!(failed(ping.on_refused(2.01, &mut br)).error.name, "timeout");
    }

    #[test]
    fn a_resumable_call_is_resent_unpinned_on_a_drop_and_on_a_new_epoch() {
        let mut br = CircuitBreaker::new(5, 0.5);
        let session = map_of([("session", Value::from("s1")), ("command", Value::from("true"))]);
        let mut p = CallPlan::new(7, "4242-1f2e3d4c5b6a", "terminal", "term.exec", &session, vec![0xc0], false,
                                  PlanSettings { timeout: 30.0, attempt_timeout: 1.0, backoff: Backoff::default(), remote: true },
                                  None, &[], 0.0).with_resumable(true);
        assert_eq!(wait(p.start(0.0, &mut br, Some(EP))), 30.0); // not pinned: one attempt, to the deadline
        assert_eq!(p.pin, None);
        let first = p.frames.clone();
        resent_at_once(p.on_actor_gone(0.2, Some(EP), None)); // a drop: resent as it was
        assert_eq!((p.pinned_by, pinned_to(&p), &p.frames), (None, None, &first));
        wait(p.resend(0.2, &mut br));
        resent_at_once(p.on_actor_gone(0.3, Some(EP), Some(SUCCESSOR))); // a successor answers it too
        assert_eq!((pinned_to(&p), &p.frames), (None, &first));
        let reply = decode_reply(&encode_reply(Some(7), SUCCESSOR, &map_of([("exit_code", Value::from(0))]), &[])).unwrap();
        assert!(matches!(p.on_reply(reply, 0.4, &mut br, 0.5), Verdict::Done(Ok(r)) if r.ok));
        // Not known to be resumable: pinned on the drop, ended by the new epoch.
        let mut q = plan("term.exec", false, true);
        q.start(0.0, &mut br, Some(EP));
        assert_eq!(q.pin.as_deref(), Some(EP));
        assert_eq!(failed(q.on_actor_gone(0.1, Some(EP), Some(SUCCESSOR))).error.name, "outcome_unknown");
    }

    #[test]
    fn sys_info_says_which_ops_are_idempotent_and_which_resumable() {
        let entry = |idem: Value, res: Value| map_of([("idempotent", idem), ("resumable", res)]);
        let info = map_of([("ops", map_of([
            ("term.exec", entry(Value::from(false), Value::from(true))),
            ("term.list", entry(Value::from(true), Value::from(false))),
            ("term.kill", entry(Value::from(false), Value::from(false))),
            ("odd", entry(Value::from(1), Value::from("yes"))), // only true says so
            ("bare", map_of([("doc", Value::from("no flags"))])),
        ]))]);
        let (idem, res) = learned_ops(&info);
        assert_eq!(idem, HashSet::from(["term.list".to_string()]));
        assert_eq!(res, HashSet::from(["term.exec".to_string()]));
        assert_eq!(learned_ops(&Value::Nil), (HashSet::new(), HashSet::new()));
        assert_eq!(learned_ops(&map_of([("ops", Value::from(3))])), (HashSet::new(), HashSet::new()));
    }

    #[test]
    fn a_call_to_a_tree_that_ended_is_not_running_unless_it_may_have_run_there() {
        let ended = TreeEnded { since: 0.5, dir: PathBuf::from("/run/x") };
        let mut br = CircuitBreaker::new(1, 60.0);
        // Safe to repeat (idempotent, or resumable): no tree will answer it, not_running.
        let mut ping = plan("sys.ping", true, false);
        wait(ping.start(0.0, &mut br, Some(EP)));
        let e = failed(ping.on_tree_gone(1.0, &ended, Some(EP)));
        assert_eq!(e.error.name, "not_running");
        assert!(e.error.message.starts_with("the moorage tree in /run/x has ended (its instance lock is free)"), "{}", e.error.message);
        let mut exec = plan("term.exec", false, false).with_resumable(true);
        wait(exec.start(0.0, &mut br, Some(EP)));
        assert_eq!(failed(exec.on_tree_gone(1.0, &ended, Some(EP))).error.name, "not_running");
        // Not safe to repeat, under way before the tree was seen ended: it may have run there.
        let mut effect = plan("fake.effect", false, false);
        wait(effect.start(0.0, &mut br, Some(EP)));
        let e = failed(effect.on_tree_gone(1.0, &ended, Some(EP)));
        assert_eq!(e.error.name, "outcome_unknown");
        assert_eq!(e.error.message, "the moorage tree in /run/x ended while fake.effect was in flight; it may or may not have run");
        let detail = map_of([("old_epoch", Value::from(EP)), ("new_epoch", Value::Nil), ("request_id", Value::from(7))]);
        assert_eq!(e.error.detail, Some(detail));
        // Begun after the client first saw it ended: no tree received it.
        let settings = PlanSettings { timeout: 30.0, attempt_timeout: 1.0, backoff: Backoff::default(), remote: false };
        let mut late = CallPlan::new(8, "4242-1f2e3d4c5b6a", "alpha", "fake.effect", &Value::Nil, vec![0xc0], false, settings, None, &[], 0.5);
        wait(late.start(0.5, &mut br, Some(EP)));
        assert_eq!(failed(late.on_tree_gone(1.0, &ended, Some(EP))).error.name, "not_running");
        // None of it counted against the breaker: the next call is not refused circuit_open.
        assert_eq!((br.failures, br.current(1.0)), (0, BreakerState::Closed));
    }

    #[test]
    fn a_call_begun_once_its_tree_was_seen_ended_is_not_running_unsent() {
        let ended = TreeEnded { since: 0.0, dir: PathBuf::from("/run/x") };
        for (op, idempotent) in [("sys.ping", true), ("fake.effect", false)] {
            let mut p = plan(op, idempotent, false);
            let e = failed(p.start_on_ended_tree(0.0, &ended));
            assert_eq!((e.error.name.as_str(), e.attempts, p.attempts), ("not_running", 0, 0), "{op}");
        }
        // (a frame no actor takes is told so, as start tells it)
        let mut big = plan("fake.effect", false, false);
        big.frames.push(vec![0; MAX_MESSAGE_SIZE + 1]);
        assert_eq!(failed(big.start_on_ended_tree(0.0, &ended)).error.name, "message_too_large");
    }
}
