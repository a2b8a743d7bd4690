//! Every decision of a call, none of its I/O (PROTOCOL.md sections 9-11): the id kept across
//! retries (the actor's reply cache answers a retry without running it again), the deadline,
//! what to do on a reply, a timeout, a dropped connection, a new epoch or a refused key, and
//! the breaker.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use rmpv::Value;

use crate::codec::{get, map_of};
use crate::envelope::{encode_request, Reply};
use crate::errors::{Error, WireError};
use crate::recovery::{max_retries_for, Backoff, BreakerState, CircuitBreaker};

/// Ops every actor serves that are safe to repeat (section 10).
pub const BUILTIN_IDEMPOTENT: &[&str] = &["sys.ping", "sys.hello", "sys.info", "replay"];
/// Error replies meaning "not run, and the same frames may run later".
pub const NOT_RUN: &[&str] = &["busy", "stopping"];
/// The matrix's Timeout row: timed-out attempts of an idempotent call resent at most this often.
pub const TIMEOUT_RETRIES: u32 = 2;
/// Ops whose `session` argument goes into an early failure's detail.
const SESSION_OPS: &[&str] = &["term.exec", "term.create"];

#[derive(Debug, Clone, Copy)]
pub struct PlanSettings {
    pub timeout: f64,
    pub attempt_timeout: f64,
    pub backoff: Backoff,
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
    pub id: u64,
    pub actor: String,
    pub op: String,
    pub idempotent: bool,
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
    pub finished: bool,
    settings: PlanSettings,
    /// The call's end-to-end time and outcome, once: (micros, ok).
    pub recorded: Option<(u64, bool)>,
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
            actor: actor.to_string(),
            op: op.to_string(),
            idempotent,
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
            finished: false,
            settings,
            recorded: None,
        }
    }

    fn error(&self, e: WireError) -> Error {
        Error { error: e, actor: self.actor.clone(), op: self.op.clone(), attempts: self.attempts }
    }

    pub fn done(&mut self, now: f64, outcome: Result<Reply, WireError>) -> Verdict {
        self.finished = true;
        let ok = matches!(&outcome, Ok(r) if r.ok);
        self.recorded = Some((((now - self.started) * 1e6).max(0.0) as u64, ok));
        Verdict::Done(outcome.map_err(|e| self.error(e)))
    }

    pub fn start(&mut self, now: f64, br: &mut CircuitBreaker) -> Verdict {
        if br.state != BreakerState::Closed && !br.allow(now) {
            let e = WireError::of("circuit_open", format!("{}: breaker open", self.actor))
                .with_retry_after((br.retry_after(now) * 1000.0) as i64);
            return self.done(now, Err(e));
        }
        self.attempts += 1;
        Verdict::Wait(self.attempt_deadline(now))
    }

    pub fn attempt_timeout(&self) -> f64 {
        self.settings.attempt_timeout * 2f64.powi(self.timeout_retries as i32)
    }

    pub fn attempt_deadline(&self, now: f64) -> f64 {
        if self.idempotent {
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
        let err = WireError::from_wire(&reply.body);
        self.last_error = Some(err.clone());
        let may_retry = NOT_RUN.contains(&err.name.as_str()) || (self.idempotent && err.retryable);
        if may_retry && self.retries < max_retries_for(&err) {
            let mut delay = self.settings.backoff.delay(self.retries, unit);
            if let Some(ms) = err.retry_after_ms {
                delay = delay.max(ms as f64 / 1000.0);
            }
            if now + delay < self.deadline {
                self.retries += 1;
                return Verdict::Resend(delay);
            }
        }
        self.done(now, Err(err))
    }

    pub fn on_timeout(&mut self, now: f64, br: &mut CircuitBreaker, unit: f64) -> Verdict {
        br.record_failure(now);
        if now >= self.deadline {
            let e = if self.idempotent {
                WireError::of("timeout", format!("no reply in {}s ({} attempts)", self.timeout, self.attempts))
            } else {
                WireError::of("outcome_unknown", format!("no reply in {}s; the request may or may not have run", self.timeout))
            };
            return self.done(now, Err(e));
        }
        if !self.idempotent {
            return self.done(now, Err(WireError::of("outcome_unknown", "no reply")));
        }
        if self.timeout_retries >= TIMEOUT_RETRIES {
            return self.done(now, Err(WireError::of("timeout", format!("no reply in {} attempts; cancelled", self.attempts))));
        }
        self.retries += 1;
        self.timeout_retries += 1;
        Verdict::Resend(self.settings.backoff.delay(self.retries - 1, unit).min((self.deadline - now).max(0.0)))
    }

    /// The actor this was sent to is gone (section 10, early failure on a dead actor).
    pub fn on_actor_gone(&mut self, now: f64, old_epoch: Option<&str>, new_epoch: Option<&str>) -> Verdict {
        if self.idempotent {
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

    pub fn resend(&mut self, now: f64, br: &mut CircuitBreaker) -> Verdict {
        if !br.allow(now) {
            let e = self.last_error.clone().unwrap_or_else(|| WireError::of("circuit_open", format!("{}: breaker open", self.actor)));
            return self.done(now, Err(e));
        }
        self.attempts += 1;
        Verdict::Wait(self.attempt_deadline(now))
    }
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
        if epoch.is_empty() || self.epoch.as_deref() == Some(epoch) {
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

    fn change(&mut self, old: Option<String>, new: Option<String>) -> Vec<Change> {
        let mut ids: Vec<u64> = self.in_flight.iter().filter(|(_, g)| **g < self.generation).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.into_iter().map(|id| Change { id, old_epoch: old.clone(), new_epoch: new.clone() }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(op: &str, idempotent: bool) -> CallPlan {
        let settings = PlanSettings { timeout: 30.0, attempt_timeout: 1.0, backoff: Backoff::default() };
        CallPlan::new(7, "4242-1f2e3d4c5b6a", "alpha", op, &Value::Nil, vec![0xc0], idempotent, settings, None, &[], 0.0)
    }

    fn failed(v: Verdict) -> Error {
        match v {
            Verdict::Done(Err(e)) => e,
            v => panic!("not a failure: {v:?}"),
        }
    }

    #[test]
    fn a_refused_key_ends_a_call_at_once_and_gives_back_its_probe() {
        let mut br = CircuitBreaker::new(1, 0.5);
        br.record_failure(0.0);
        let mut p = plan("fake.held", false);
        assert!(matches!(p.start(1.0, &mut br), Verdict::Wait(_))); // half-open: the probe
        assert_eq!(failed(plan("fake.work", false).start(1.0, &mut br)).error.name, "circuit_open");
        let e = failed(p.on_refused(1.01, &mut br));
        assert_eq!(e.error.name, "outcome_unknown"); // it may have run before the key was revoked
        assert_eq!(e.error.message, "no reply: the tree refused this client's key (1 attempts)");
        assert!(matches!(plan("fake.work", false).start(1.02, &mut br), Verdict::Wait(_))); // the probe is free again
        let mut ping = plan("sys.ping", true);
        br.record_success();
        ping.start(2.0, &mut br);
        assert_eq!(failed(ping.on_refused(2.01, &mut br)).error.name, "timeout");
    }
}
