//! End-to-end latency per (actor, op) as this client sees it, optionally pushed to the metrics
//! actor (PROTOCOL.md section 2, "A client's own latency"): header {actor: client.<name>, pid,
//! ep: sid}, ops named `<actor>/<op>`, from a background thread. Of each op's errors, those
//! that were the caller's by the error table's `fault` column (section 6) go as `caller`, as
//! every actor counts its own, so the metrics actor's failure rate for the client's row counts
//! only the service's.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rmpv::Value;

use crate::codec::{encode, map_of};
use crate::endpoints::Endpoints;
use crate::envelope::TAG;
use crate::histogram::{Recorder, Summary};
use crate::limits::MAX_OP_LEN;
pub use crate::limits::{MAX_OPS_PER_PUSH, MAX_PUSH_BUCKETS, MAX_PUSH_HIST_BYTES};

pub const MAX_NAME: usize = 100;

#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub ok: u64,
    pub error: u64,
    /// Of `error`, those that were the caller's fault.
    pub caller: u64,
    pub times: Recorder,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.ok += other.ok;
        self.error += other.error;
        self.caller += other.caller;
        self.times.add(&other.times);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyRow {
    pub actor: String,
    pub op: String,
    pub ok: u64,
    pub error: u64,
    pub summary: Summary,
}

#[derive(Debug, Default)]
pub struct LatencyBook {
    pub pushing: bool,
    life: BTreeMap<String, BTreeMap<String, Counts>>,
    pending: BTreeMap<String, Counts>,
}

pub fn check_metrics_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!("metrics_name must be 1 to {MAX_NAME} printable characters"));
    }
    Ok(())
}

fn pushed_op(actor: &str, op: &str) -> String {
    format!("{actor}/{op}").chars().take(MAX_OP_LEN).collect()
}

impl LatencyBook {
    pub fn new(pushing: bool) -> LatencyBook {
        LatencyBook { pushing, ..LatencyBook::default() }
    }

    /// One finished call; `caller`: it failed with an error that is the caller's (looked at
    /// only for an error).
    pub fn record(&mut self, actor: &str, op: &str, micros: u64, ok: bool, caller: bool) {
        let add = |c: &mut Counts| {
            if ok {
                c.ok += 1;
            } else {
                c.error += 1;
                if caller {
                    c.caller += 1;
                }
            }
            c.times.record(micros);
        };
        match self.life.get_mut(actor).and_then(|ops| ops.get_mut(op)) {
            Some(c) => add(c),
            None => add(self.life.entry(actor.to_string()).or_default().entry(op.to_string()).or_default()),
        }
        if self.pushing {
            add(self.pending.entry(pushed_op(actor, op)).or_default());
        }
    }

    pub fn report(&self) -> Vec<LatencyRow> {
        self.life.iter().flat_map(|(actor, ops)| ops.iter().map(move |(op, c)| LatencyRow {
            actor: actor.clone(), op: op.clone(), ok: c.ok, error: c.error, summary: c.times.summary(),
        })).collect()
    }

    fn take(&mut self) -> Vec<(String, Counts)> {
        std::mem::take(&mut self.pending).into_iter().collect()
    }

    fn put_back(&mut self, name: String, c: Counts) {
        self.pending.entry(name).or_default().add(&c);
    }
}

/// The pusher thread: every `interval`, what ended since the last push goes to `metrics.in`;
/// a push the queue will not take now goes with the next one. Dropping it pushes once more.
pub struct Pusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Pusher {
    /// `endpoint`: `endpoints.metrics_in()`; in remote mode the PUSH is made a CURVE client
    /// of the tree's key (`Endpoints::secure`) before it connects, as every socket there is.
    pub fn start(ctx: &zmq::Context, endpoints: &Endpoints, endpoint: &str, book: Arc<Mutex<LatencyBook>>, name: &str, sid: &str,
                 interval: Duration) -> zmq::Result<Pusher> {
        let sock = ctx.socket(zmq::PUSH)?;
        sock.set_linger(250)?;
        sock.set_sndhwm(100)?;
        endpoints.secure(&sock, true)?;
        sock.connect(endpoint)?;
        let header = encode(&map_of([
            ("actor", Value::from(format!("client.{name}"))),
            ("pid", Value::from(std::process::id())),
            ("ep", Value::from(sid)),
        ]));
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("moorage-latency-push".into()).spawn(move || {
            loop {
                let stopping = !matches!(rx.recv_timeout(interval), Err(RecvTimeoutError::Timeout));
                push(&sock, &header, &book);
                if stopping {
                    return;
                }
            }
        }).expect("spawning the pusher thread");
        Ok(Pusher { stop: Some(tx), thread: Some(thread) })
    }
}

/// One op of a push body: its pushed name, its counts, its encoded histogram, and that
/// histogram's non-zero counts.
#[derive(Debug, Clone)]
pub struct PushedOp {
    pub name: String,
    pub counts: Counts,
    pub hist: Vec<u8>,
    pub buckets: usize,
}

impl PushedOp {
    pub fn new(name: String, counts: Counts) -> PushedOp {
        let hist = counts.times.encode();
        let buckets = counts.times.non_zero_counts();
        PushedOp { name, counts, hist, buckets }
    }
}

/// `ops` in order, cut into push bodies the metrics actor takes: at most `MAX_OPS_PER_PUSH`
/// ops, `MAX_PUSH_HIST_BYTES` of encoded histograms and `MAX_PUSH_BUCKETS` non-zero counts in
/// them each, since it refuses a bigger push whole (every figure in it lost). An op past a
/// bound alone goes in a body of its own.
pub fn split_push(ops: Vec<PushedOp>) -> Vec<Vec<PushedOp>> {
    let mut bodies = Vec::new();
    let mut body: Vec<PushedOp> = Vec::new();
    let (mut bytes, mut buckets) = (0, 0);
    for op in ops {
        if !body.is_empty() && (body.len() == MAX_OPS_PER_PUSH || bytes + op.hist.len() > MAX_PUSH_HIST_BYTES
            || buckets + op.buckets > MAX_PUSH_BUCKETS) {
            bodies.push(std::mem::take(&mut body));
            (bytes, buckets) = (0, 0);
        }
        bytes += op.hist.len();
        buckets += op.buckets;
        body.push(op);
    }
    if !body.is_empty() {
        bodies.push(body);
    }
    bodies
}

/// An op of a push body: `{ok, error, caller?, hist}`, `caller` only when some errors were the
/// caller's (absent = 0, as an actor pushes it).
fn entry(op: &PushedOp) -> Value {
    let mut fields = vec![("ok", Value::from(op.counts.ok)), ("error", Value::from(op.counts.error))];
    if op.counts.caller > 0 {
        fields.push(("caller", Value::from(op.counts.caller)));
    }
    fields.push(("hist", Value::Binary(op.hist.clone())));
    map_of(fields)
}

fn push(sock: &zmq::Socket, header: &[u8], book: &Mutex<LatencyBook>) {
    let taken = book.lock().unwrap().take();
    let mut rest = split_push(taken.into_iter().map(|(name, c)| PushedOp::new(name, c)).collect()).into_iter();
    while let Some(chunk) = rest.next() {
        let body = map_of(chunk.iter().map(|op| (op.name.clone(), entry(op))));
        let frames: [&[u8]; 3] = [TAG, header, &encode(&body)];
        if sock.send_multipart(frames, zmq::DONTWAIT).is_err() {
            let mut b = book.lock().unwrap();
            for op in chunk.into_iter().chain(rest.flatten()) {
                b.put_back(op.name, op.counts);
            }
            return;
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
