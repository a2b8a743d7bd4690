//! The breaker's refusals (PROTOCOL.md section 11), on the call's plan alone: `circuit_open`
//! means "not sent", so only a call refused before its first send ends with it, with a
//! `retry_after_ms` above 0 (the cooldown left; while half-open, the breaker's current
//! cooldown); a call that was sent and whose resend the breaker refuses ends with its own
//! outcome. Each attempt with no reply is one failure. (The late reply that counts as a
//! success is in tests/client.rs.)

use moorage_client::calls::{CallPlan, PlanSettings, Verdict};
use moorage_client::envelope::{decode_reply, encode_error};
use moorage_client::recovery::{Backoff, BreakerState, CircuitBreaker};
use moorage_client::{Error, Value, WireError};

const EP: &str = "5eed0f1ce0ffee00";

fn plan(id: u64, op: &str, idempotent: bool) -> CallPlan {
    let settings = PlanSettings { timeout: 30.0, attempt_timeout: 1.0, backoff: Backoff::default(), remote: false };
    CallPlan::new(id, "4242-1f2e3d4c5b6a", "alpha", op, &Value::Nil, vec![0xc0], idempotent, settings, None, &[], 0.0)
}

fn failed(v: Verdict) -> Error {
    match v {
        Verdict::Done(Err(e)) => e,
        v => panic!("not a failure: {v:?}"),
    }
}

fn sent(v: Verdict) {
    assert!(matches!(v, Verdict::Wait(_)), "not sent: {v:?}");
}

fn resend(v: Verdict) {
    assert!(matches!(v, Verdict::Resend(_)), "not a resend: {v:?}");
}

#[test]
fn a_call_whose_resend_the_breaker_refuses_ends_timeout_when_its_attempts_got_no_reply() {
    let mut br = CircuitBreaker::new(2, 60.0);
    let mut p = plan(1, "fake.read", true);
    sent(p.start(0.0, &mut br, None));
    resend(p.on_timeout(1.0, &mut br, 0.5)); // one failure
    sent(p.resend(1.01, &mut br)); // still closed: sent again
    resend(p.on_timeout(3.01, &mut br, 0.5)); // two: open
    assert_eq!(br.current(3.01), BreakerState::Open);
    let e = failed(p.resend(3.02, &mut br));
    assert_eq!((e.error.name.as_str(), e.attempts, e.error.retry_after_ms), ("timeout", 2, None));
}

#[test]
fn a_refused_resend_ends_with_the_last_attempt_s_outcome_its_error_reply_or_no_reply() {
    let mut br = CircuitBreaker::new(1, 60.0);
    let mut busy = plan(1, "fake.read", true);
    sent(busy.start(0.0, &mut br, None));
    let refusal = decode_reply(&encode_error(Some(1), EP, &WireError::of("busy", "later").with_retry_after(50))).unwrap();
    resend(busy.on_reply(refusal, 0.01, &mut br, 0.5));
    br.record_failure(0.02); // another call's timeout opens it
    let e = failed(busy.resend(0.07, &mut br));
    assert_eq!((e.error.name.as_str(), e.error.retry_after_ms), ("busy", Some(50)));

    let mut br = CircuitBreaker::new(1, 60.0);
    let mut dropped = plan(2, "fake.read", true);
    let mut resumable = plan(3, "term.exec", false).with_resumable(true);
    sent(dropped.start(0.0, &mut br, None));
    sent(resumable.start(0.0, &mut br, None));
    br.record_failure(0.1);
    let mut names = vec![];
    for p in [&mut dropped, &mut resumable] {
        br.give_back(); // (as the client does at a drop)
        resend(p.on_actor_gone(0.2, Some(EP), None));
        let e = failed(p.resend(0.2, &mut br));
        names.push((e.error.name, e.attempts));
    }
    assert_eq!(names, vec![("timeout".to_string(), 1), ("outcome_unknown".to_string(), 1)]);
}

#[test]
fn a_call_refused_before_its_send_is_circuit_open_with_a_retry_after_never_0() {
    let mut br = CircuitBreaker::new(1, 0.5);
    br.record_failure(0.0); // open until 0.5
    let e = failed(plan(1, "fake.read", true).start(0.25, &mut br, None));
    assert_eq!((e.error.name.as_str(), e.error.retry_after_ms, e.attempts), ("circuit_open", Some(250), 0));
    let mut probe = plan(2, "fake.read", true);
    sent(probe.start(0.6, &mut br, None)); // half-open: the probe goes out
    let e = failed(plan(3, "fake.read", true).start(0.7, &mut br, None));
    assert_eq!((e.error.name.as_str(), e.error.retry_after_ms), ("circuit_open", Some(500)));
    // The probe fails: open again, its cooldown doubled; half-open again after it, 1000.
    resend(probe.on_timeout(1.6, &mut br, 0.5));
    assert_eq!(br.current(1.6), BreakerState::Open);
    sent(plan(4, "fake.read", true).start(2.7, &mut br, None));
    let e = failed(plan(5, "fake.read", true).start(2.8, &mut br, None));
    assert_eq!((e.error.name.as_str(), e.error.retry_after_ms), ("circuit_open", Some(1000)));
}
