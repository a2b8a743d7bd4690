//! The recovery matrix (PROTOCOL.md section 7), back-off and the per-actor circuit breaker
//! (section 11). Time is passed in (seconds on a monotonic clock), never read.

use crate::errors::WireError;

/// category, severity, primary, fallback, max_retries (None: a throttling row, N/A).
pub const MATRIX: &[(&str, &str, &str, Option<&str>, Option<u32>)] = &[
    ("terminal", "critical", "recreate_terminal", Some("alert_user"), Some(1)),
    ("terminal", "recoverable", "retry_command", Some("raw_output_mode"), Some(3)),
    ("filesystem", "critical", "alert_user", None, Some(0)),
    ("filesystem", "recoverable", "retry_with_backoff", Some("cache_previous"), Some(3)),
    ("network", "critical", "reconnect_ipc", Some("local_mode"), Some(5)),
    ("network", "recoverable", "retry_request", Some("queue_for_later"), Some(3)),
    ("parser", "critical", "reset_parser_state", Some("skip_markers"), Some(0)),
    ("parser", "recoverable", "buffer_and_retry", Some("raw_passthrough"), Some(1)),
    ("resource", "critical", "free_resources", Some("graceful_shutdown"), Some(0)),
    ("resource", "recoverable", "throttle_operations", Some("reduce_quality"), None),
    ("timeout", "recoverable", "increase_timeout", Some("cancel_operation"), Some(2)),
];

/// How many resends an error allows (section 7).
pub fn max_retries_for(e: &WireError) -> u32 {
    if !e.retryable {
        return 0;
    }
    match MATRIX.iter().find(|r| r.0 == e.category && r.1 == e.severity) {
        Some((_, _, _, _, Some(n))) => *n,
        _ => 3,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: f64,
    pub factor: f64,
    pub cap: f64,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: 0.01, factor: 2.0, cap: 0.5, jitter: 0.2 }
    }
}

impl Backoff {
    /// Seconds before retry number `attempt` (0 for the first); `unit` in [0, 1) is the jitter's draw.
    pub fn delay(&self, attempt: u32, unit: f64) -> f64 {
        let d = (self.initial * self.factor.powi(attempt.min(64) as i32)).min(self.cap);
        d * (1.0 - self.jitter) + d * self.jitter * unit
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// closed -> open after `threshold` consecutive failures; open -> half-open after `cooldown`;
/// half-open lets `probes` calls through: a success closes, a failure reopens with the cooldown
/// doubled (at most `max_cooldown`); a probe never reported is given up after `probe_lease`.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    pub threshold: u32,
    pub base_cooldown: f64,
    pub max_cooldown: f64,
    pub probes: u32,
    pub probe_lease: f64,
    pub state: BreakerState,
    pub failures: u32,
    pub cooldown: f64,
    opened_at: f64,
    probes_out: u32,
    probe_at: f64,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: f64) -> Self {
        CircuitBreaker {
            threshold,
            base_cooldown: cooldown,
            max_cooldown: 10.0,
            probes: 1,
            probe_lease: 30.0,
            state: BreakerState::Closed,
            failures: 0,
            cooldown,
            opened_at: 0.0,
            probes_out: 0,
            probe_at: 0.0,
        }
    }

    pub fn current(&mut self, now: f64) -> BreakerState {
        if self.state == BreakerState::Open && now - self.opened_at >= self.cooldown {
            self.state = BreakerState::HalfOpen;
            self.probes_out = 0;
        }
        self.state
    }

    pub fn allow(&mut self, now: f64) -> bool {
        match self.current(now) {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => {
                if self.probes_out >= self.probes && now - self.probe_at >= self.probe_lease {
                    self.probes_out = 0;
                }
                if self.probes_out < self.probes {
                    self.probes_out += 1;
                    self.probe_at = now;
                    return true;
                }
                false
            }
            BreakerState::Open => false,
        }
    }

    /// An attempt ended with no outcome (the connection dropped under it): the probe it held,
    /// if any, is free again, for its own resend or another call.
    pub fn give_back(&mut self) {
        if self.state == BreakerState::HalfOpen && self.probes_out > 0 {
            self.probes_out -= 1;
        }
    }

    pub fn retry_after(&self, now: f64) -> f64 {
        if self.state == BreakerState::Open {
            (self.opened_at + self.cooldown - now).max(0.0)
        } else {
            0.0
        }
    }

    pub fn record_success(&mut self) {
        self.failures = 0;
        self.cooldown = self.base_cooldown;
        self.state = BreakerState::Closed;
    }

    pub fn record_failure(&mut self, now: f64) {
        self.failures += 1;
        if self.state == BreakerState::HalfOpen {
            self.cooldown = (self.cooldown * 2.0).min(self.max_cooldown);
            self.open(now);
        } else if self.state == BreakerState::Closed && self.failures >= self.threshold {
            self.open(now);
        }
    }

    fn open(&mut self, now: f64) {
        self.opened_at = now;
        self.probes_out = 0;
        self.state = BreakerState::Open;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_whose_connection_dropped_gives_its_place_back_to_its_resend() {
        let mut br = CircuitBreaker::new(1, 1.0);
        br.record_failure(0.0);
        assert!(br.allow(1.0)); // the probe goes out; the actor dies under it
        assert!(!br.allow(1.005)); // one probe at a time
        br.give_back();
        assert!(br.allow(1.01)); // its resend is the probe now
        assert!(!br.allow(1.02));
        br.record_success();
        assert_eq!(br.current(1.1), BreakerState::Closed);
    }
}
