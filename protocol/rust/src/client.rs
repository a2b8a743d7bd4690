//! The blocking client: one DEALER per actor (any number of calls in flight through
//! `pipeline`), SUB sockets for subscriptions (PROTOCOL.md section 2). Decisions live in
//! calls.rs and streams.rs; this file moves frames and waits.
//!
//! ```no_run
//! use moorage_client::{Client, Options, Value};
//! let mut c = Client::new(Options::default())?;
//! let hello = c.hello("terminal")?;
//! let r = c.call("watcher", "fs.stat", moorage_client::args([("path", Value::from("/tmp"))]))?;
//! # Ok::<(), moorage_client::Error>(())
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmpv::Value;

use crate::calls::{call_timeout, declared_timeouts, known_idempotent, learned_ops, ActorLink, CallPlan, PlanSettings, TreeEnded, Verdict, BUILTIN_IDEMPOTENT};
use crate::codec::{self, get};
use crate::endpoints::{check_runtime_dir, client_keys, keys_dir, runtime_dir, runtime_dir_of_connection_file, trusted_tree_running, CurveKeys, Endpoints};
use crate::envelope::{decode_reply, decode_stream, Reply};
use crate::errors::{unauthorized, undelivered, Error, WireError};
use crate::latency::{check_metrics_name, LatencyBook, LatencyRow, Pusher};
use crate::limits::{HWM, MAX_MESSAGE_SIZE, MAX_TOPIC_LEN, STREAM_HWM};
use crate::recovery::{Backoff, BreakerState, CircuitBreaker};
use crate::streams::{ByteGap, GapFill, StreamEvent, StreamTracker};

/// Of a call's time, the share that learning the actor's idempotent ops may take first.
const LEARN_SHARE: f64 = 0.5;
/// A waiting call blocks in receive for at most this long before it looks at the connection's
/// monitor and its deadlines: how late a drop (the actor died) or a deadline is noticed.
const WAIT_SLICE_MS: i32 = 10;
/// How long a client waits for a closed socket's last monitor event (MONITOR_STOPPED) before
/// it gives up telling whether a call was delivered (`Client::undelivered`), milliseconds.
const UNDELIVERED_CHECK_MS: u64 = 2000;

#[derive(Debug, Clone)]
pub struct Options {
    /// The runtime directory itself (wins over everything, section 2).
    pub runtime_dir: Option<PathBuf>,
    /// An instance name (section 2's row 1).
    pub instance: Option<String>,
    pub sid: Option<String>,
    /// Whole call, all attempts, seconds, of a call given no timeout; an op that declares a
    /// longer one (its sys.info `timeout_ms`) gets that instead, at most 60 s (section 9).
    pub timeout: f64,
    /// One attempt of an idempotent call (or, in remote mode, of one resent pinned) before it
    /// is resent, seconds.
    pub attempt_timeout: f64,
    pub backoff: Backoff,
    pub breaker_threshold: u32,
    pub breaker_cooldown: f64,
    pub reconnect_ivl_ms: i32,
    pub reconnect_ivl_max_ms: i32,
    pub idempotent_ops: HashSet<String>,
    /// Ask each actor's sys.info which of its ops are idempotent (once, before it matters).
    pub learn_ops: bool,
    /// Push this client's latencies to the metrics actor as `client.<metrics_name>`.
    pub metrics_name: Option<String>,
    pub metrics_interval: Duration,
    /// Remote mode: the tree elsewhere that this connection file describes, over tcp with CURVE.
    /// A link may then drop under a live actor: a call that may have run is resent pinned to
    /// the actor's life (section 10).
    pub remote: Option<Remote>,
}

/// A tree elsewhere (PROTOCOL.md section 2, "Remote"): its connection file (copied), the key
/// pair to prove this client with (default: this user's, `moorage keys init`), and the host to
/// reach it at when not the address it bound (0.0.0.0, a forwarded port).
#[derive(Debug, Clone)]
pub struct Remote {
    pub connection_file: PathBuf,
    pub keys: Option<CurveKeys>,
    pub host: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runtime_dir: None,
            instance: None,
            sid: None,
            timeout: 5.0,
            attempt_timeout: 1.0,
            backoff: Backoff::default(),
            breaker_threshold: 5,
            breaker_cooldown: 0.5,
            reconnect_ivl_ms: 5,
            reconnect_ivl_max_ms: 0,
            idempotent_ops: HashSet::new(),
            learn_ops: true,
            metrics_name: None,
            metrics_interval: Duration::from_secs(1),
            remote: None,
        }
    }
}

/// Per call: a timeout (seconds) other than the client's, what is known of the op, attachments,
/// and an id to reuse (a resend of the same op and args, answered from the reply cache).
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub timeout: Option<f64>,
    pub idempotent: Option<bool>,
    pub attachments: Vec<Vec<u8>>,
    pub id: Option<u64>,
}

/// Each option checked where it is given (`bad_args` naming it), before the client looks for a
/// tree: a NaN or negative timeout would fail a call's deadline arithmetic, a negative
/// reconnection interval libzmq's setsockopt, far from the mistake.
fn check_options(o: &Options) -> Result<(), String> {
    let seconds = |v: f64, positive: bool| v.is_finite() && if positive { v > 0.0 } else { v >= 0.0 };
    let checks: [(&str, bool, &str, String); 7] = [
        ("timeout", seconds(o.timeout, true), "seconds > 0", o.timeout.to_string()),
        ("attempt_timeout", seconds(o.attempt_timeout, true), "seconds > 0", o.attempt_timeout.to_string()),
        ("breaker_cooldown", seconds(o.breaker_cooldown, false), "seconds >= 0", o.breaker_cooldown.to_string()),
        ("breaker_threshold", o.breaker_threshold >= 1, "a count >= 1", o.breaker_threshold.to_string()),
        ("reconnect_ivl_ms", o.reconnect_ivl_ms >= 0, "milliseconds >= 0", o.reconnect_ivl_ms.to_string()),
        ("reconnect_ivl_max_ms", o.reconnect_ivl_max_ms >= 0, "milliseconds >= 0", o.reconnect_ivl_max_ms.to_string()),
        ("metrics_interval", !o.metrics_interval.is_zero(), "a duration > 0", format!("{:?}", o.metrics_interval)),
    ];
    match checks.iter().find(|c| !c.1) {
        Some((name, _, want, value)) => Err(format!("Options.{name} must be {want}, not {value}")),
        None => Ok(()),
    }
}

fn local_error(name: &str, message: String, actor: &str, op: &str) -> Error {
    Error { error: WireError::of(name, message), actor: actor.to_string(), op: op.to_string(), attempts: 0 }
}

struct Conn {
    sock: zmq::Socket,
    monitor: zmq::Socket,
    link: ActorLink,
    /// The last handshake over tcp: the tree refused our key (HANDSHAKE_FAILED_AUTH).
    key_refused: bool,
    /// Handshakes completed on this socket: libzmq sends nothing on a connection before its
    /// handshake, and says so before it sends anything (ipc too). While 0, nothing left it.
    handshakes: u32,
    /// Connections made that ended before their handshake (a wrong server key: the CURVE
    /// server cannot read our HELLO and closes it).
    ended_early: u32,
    /// A connection is made (CONNECTED) and its handshake has neither completed nor failed yet.
    handshaking: bool,
    endpoint: String,
}

impl Conn {
    /// Is a connection's handshake under way, with none before it ended early? It may yet
    /// complete (a CURVE handshake is some three round trips: over a link with 200 ms each way,
    /// longer than a replay page's 1 s), and what the socket holds then leaves with it. A call
    /// that got no reply meanwhile is not told undelivered: that would close the socket and
    /// throw the handshake away, and the next call's connection would start over, as slow: on
    /// such a link no call would ever get through. A connection that ended early (a stale
    /// server key) or none made (a tree down) is no such hope.
    fn may_get_in(&self) -> bool {
        self.handshaking && self.ended_early == 0
    }
}

enum Due {
    Reply(f64),
    Resend(f64),
}

/// A client of one tree. Not shared between threads: give each thread its own.
pub struct Client {
    ctx: zmq::Context,
    pub runtime_dir: PathBuf,
    endpoints: Endpoints,
    pub sid: String,
    options: Options,
    conns: HashMap<String, Conn>,
    breakers: HashMap<String, CircuitBreaker>,
    learned: HashMap<String, HashSet<String>>,
    /// ... and its resumable ones (sys.info), learned with them.
    resumable: HashMap<String, HashSet<String>>,
    /// ... and each op's declared timeout, seconds (sys.info's `timeout_ms`).
    op_timeouts: HashMap<String, HashMap<String, f64>>,
    next_id: u64,
    latency: Arc<Mutex<LatencyBook>>,
    _pusher: Option<Pusher>,
    clock: Instant,
    rng: u64,
    monitors: u64,
    /// This client found its tree (by instance, or from a connection file: its lock was held),
    /// so it may take that tree for ended (`tree_gone`); one given a directory or a remote one
    /// never does.
    found: bool,
    /// When a look at the lock first found that tree ended (`tree_gone`, on `now()`'s clock);
    /// None while it runs: a call begun after it can have reached no tree, and one begun
    /// while it is set looks at the lock before it is sent.
    gone_since: Option<f64>,
}

impl Client {
    pub fn new(options: Options) -> Result<Client, Error> {
        Client::with_context(zmq::Context::new(), options)
    }

    /// A client of the tree a connection file (`tree.json`) describes; `not_running` at once
    /// if that tree does not run (its instance lock, beside the file, is free).
    pub fn from_connection_file(path: &Path, mut options: Options) -> Result<Client, Error> {
        let folder = path.parent().unwrap_or(Path::new("."));
        // (a folder not this user's, or a forged lock: `forbidden`, nothing sent there)
        if !trusted_tree_running(folder).map_err(|m| local_error("forbidden", m, "", ""))? {
            let m = format!("no moorage tree is running for {} (its instance lock in {} is free)", path.display(), folder.display());
            return Err(local_error("not_running", m, "", ""));
        }
        let dir = runtime_dir_of_connection_file(path).map_err(|m| local_error("bad_args", m, "", ""))?;
        options.runtime_dir = Some(dir);
        let mut client = Client::new(options)?;
        client.found = client.options.remote.is_none();
        Ok(client)
    }

    pub fn with_context(ctx: zmq::Context, options: Options) -> Result<Client, Error> {
        check_options(&options).map_err(|m| local_error("bad_args", m, "", ""))?;
        let found = options.remote.is_none() && options.runtime_dir.is_none();
        let dir = match (&options.remote, &options.runtime_dir) {
            (Some(r), _) => runtime_dir_of_connection_file(&r.connection_file).map_err(|m| local_error("bad_args", m, "", ""))?,
            (None, Some(d)) => {
                // A directory given is used whether or not a tree runs there yet (it may start
                // later), unless it is one this user must not trust: another's, open to others,
                // a link (as the Python and TypeScript clients refuse it).
                check_runtime_dir(d).map_err(|m| local_error("forbidden", m, "", ""))?;
                d.clone()
            }
            (None, None) => {
                // Given no directory, the client finds the running tree or says at once that
                // none runs: a request to a socket with no tree would only ever time out.
                let dir = runtime_dir(options.instance.as_deref()).map_err(|m| local_error("bad_args", m, "", ""))?;
                if !trusted_tree_running(&dir).map_err(|m| local_error("forbidden", m, "", ""))? {
                    let what = options.instance.as_ref().map_or_else(|| dir.display().to_string(), |n| format!("instance {n:?}"));
                    let m = format!("no moorage tree is running for {what} (no live lock in {}); start one with `moorage up`", dir.display());
                    return Err(local_error("not_running", m, "", ""));
                }
                dir
            }
        };
        let seed = Instant::now().elapsed().as_nanos() as u64 ^ (std::process::id() as u64) << 32
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let sid = options.sid.clone().unwrap_or_else(|| format!("{}-{:012x}", std::process::id(), random_u64(seed) & 0xffff_ffff_ffff));
        let endpoints = match &options.remote {
            Some(r) => {
                let keys = match &r.keys {
                    Some(k) => k.clone(),
                    None => client_keys(&keys_dir()).map_err(|m| local_error("bad_args", m, "", ""))?,
                };
                Endpoints::remote(&r.connection_file, keys, r.host.as_deref()).map_err(|m| local_error("bad_args", m, "", ""))?
            }
            None => Endpoints::of(&dir),
        };
        let latency = Arc::new(Mutex::new(LatencyBook::new(options.metrics_name.is_some())));
        let pusher = match &options.metrics_name {
            Some(name) => {
                check_metrics_name(name).map_err(|m| local_error("bad_args", m, "", ""))?;
                let at = endpoints.metrics_in().map_err(|m| local_error("bad_args", m, "", ""))?;
                Some(Pusher::start(&ctx, &endpoints, &at, latency.clone(), name, &sid, options.metrics_interval)
                    .map_err(|e| local_error("unavailable", e.to_string(), "metrics", ""))?)
            }
            None => None,
        };
        Ok(Client {
            ctx,
            runtime_dir: dir,
            endpoints,
            sid,
            options,
            conns: HashMap::new(),
            breakers: HashMap::new(),
            learned: HashMap::new(),
            resumable: HashMap::new(),
            op_timeouts: HashMap::new(),
            next_id: 1,
            latency,
            _pusher: pusher,
            clock: Instant::now(),
            rng: seed | 1,
            monitors: 0,
            found,
            gone_since: None,
        })
    }

    /// Has the tree this client found (by instance, or from a connection file) ended, its
    /// instance lock free? Then since when it is seen so (`gone_since`), else None. Looked at
    /// when a call's attempt went unanswered or its connection dropped (`CallPlan::on_tree_gone`),
    /// and before a call's first send once the tree was seen ended (`seen_ended`): that tree
    /// will not answer it, and an editor polling a stopped tree would hear so only at each
    /// call's whole budget, as `timeout` or `unavailable`. A look that finds a tree holding the
    /// instance again forgets the end. A client given a directory, which waits for a tree to
    /// come up there, and a remote one never take their tree for gone; nor does a lock this
    /// user must not trust, which leaves what was seen before as it was.
    fn tree_gone(&mut self) -> Option<TreeEnded> {
        if !self.found || self.options.remote.is_some() {
            return None;
        }
        match trusted_tree_running(&self.runtime_dir) {
            Ok(true) => self.gone_since = None,
            Ok(false) => {
                let now = self.now();
                let since = *self.gone_since.get_or_insert(now);
                return Some(TreeEnded { since, dir: self.runtime_dir.clone() });
            }
            Err(_) => self.gone_since = None, // (a lock not to be trusted: none seen ended)
        }
        None
    }

    /// Before a call's first send: once this client has seen its tree ended, a look at the
    /// lock (`tree_gone`), which ends the call `not_running` unsent while no tree holds the
    /// instance again; none while the tree was not seen ended (a call costs no look then).
    fn seen_ended(&mut self) -> Option<TreeEnded> {
        self.gone_since?; // (not seen ended: no look)
        self.tree_gone()
    }

    fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    fn unit(&mut self) -> f64 {
        self.rng = random_u64(self.rng);
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn conn(&mut self, actor: &str) -> Result<&mut Conn, Error> {
        if !self.conns.contains_key(actor) {
            if !self.endpoints.knows(actor) {
                return Err(local_error("bad_args", format!("the tree's connection file names no actor {actor:?}"), actor, ""));
            }
            let zerr = |e: zmq::Error| local_error("unavailable", format!("{actor}: {e}"), actor, "");
            let sock = self.ctx.socket(zmq::DEALER).map_err(zerr)?;
            sock.set_linger(0).map_err(zerr)?;
            sock.set_reconnect_ivl(self.options.reconnect_ivl_ms).map_err(zerr)?;
            sock.set_reconnect_ivl_max(self.options.reconnect_ivl_max_ms).map_err(zerr)?;
            sock.set_maxmsgsize(MAX_MESSAGE_SIZE as i64).map_err(zerr)?;
            sock.set_sndhwm(HWM).map_err(zerr)?;
            sock.set_rcvhwm(HWM).map_err(zerr)?;
            sock.set_rcvtimeo(WAIT_SLICE_MS).map_err(zerr)?;
            // A send never blocks (see `apply`): a DEALER whose connection libzmq ended for good
            // (a frame over MAXMSGSIZE is a protocol error, never reconnected) has nowhere to
            // queue, and a blocking send would outlast every deadline.
            sock.set_sndtimeo(0).map_err(zerr)?;
            self.monitors += 1;
            let addr = format!("inproc://moorage-monitor-{}-{}-{}", self.sid, actor, self.monitors);
            // (CONNECTED: a handshake then under way, `Conn::may_get_in`; HANDSHAKE_FAILED_AUTH
            // only over tcp, where the tree's ZAP handler judges our key; MONITOR_STOPPED: a
            // closed socket's last event, `undelivered`)
            let events = zmq::SocketEvent::CONNECTED as i32 | zmq::SocketEvent::DISCONNECTED as i32 | zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32
                | zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32 | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32
                | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32 | zmq::SocketEvent::MONITOR_STOPPED as i32;
            sock.monitor(&addr, events).map_err(zerr)?;
            let monitor = self.ctx.socket(zmq::PAIR).map_err(zerr)?;
            monitor.set_linger(0).map_err(zerr)?;
            monitor.connect(&addr).map_err(zerr)?;
            self.endpoints.secure(&sock, true).map_err(zerr)?;
            // (ZeroMQ refusing the endpoint, an ipc path past a socket's 107 bytes: the caller
            // named what cannot be reached)
            let endpoint = self.endpoints.rpc(actor);
            sock.connect(&endpoint)
                .map_err(|e| local_error("bad_args", format!("{actor}: no rpc socket to connect to: {e}"), actor, ""))?;
            self.conns.insert(actor.to_string(), Conn {
                sock, monitor, link: ActorLink::new(None), key_refused: false, handshakes: 0, ended_early: 0, handshaking: false, endpoint,
            });
        }
        Ok(self.conns.get_mut(actor).unwrap())
    }

    fn breaker(&mut self, actor: &str) -> &mut CircuitBreaker {
        if !self.breakers.contains_key(actor) {
            let (t, c) = (self.options.breaker_threshold, self.options.breaker_cooldown);
            self.breakers.insert(actor.to_string(), CircuitBreaker::new(t, c));
        }
        self.breakers.get_mut(actor).unwrap()
    }

    pub fn breaker_state(&mut self, actor: &str) -> BreakerState {
        let now = self.now();
        self.breaker(actor).current(now)
    }

    /// The epoch `actor` last answered with (section 8).
    pub fn epoch(&self, actor: &str) -> Option<&str> {
        self.conns.get(actor).and_then(|c| c.link.epoch.as_deref())
    }

    /// How many times this client saw `actor`'s epoch change (a restart).
    pub fn restarts_seen(&self, actor: &str) -> u32 {
        self.conns.get(actor).map_or(0, |c| c.link.restarts_seen)
    }

    /// Is `op` of `actor` safe to repeat, as this client knows now (`calls::known_idempotent`:
    /// the actor's sys.info once learned, the schema's until then)?
    pub fn is_idempotent(&self, actor: &str, op: &str) -> bool {
        known_idempotent(op, self.learned.get(actor), &self.options.idempotent_ops)
    }

    /// Did `actor`'s sys.info say `op` is resumable (answered by any of its lives)?
    pub fn is_resumable(&self, actor: &str, op: &str) -> bool {
        self.resumable.get(actor).is_some_and(|s| s.contains(op))
    }

    /// The time of a call of `op` given none: its op's declared timeout (as learned from
    /// sys.info, run-time overrides included) plus a margin, at most 60 s; the client's
    /// `timeout` when the actor has not told it (section 9).
    pub fn call_timeout(&self, actor: &str, op: &str) -> f64 {
        call_timeout(self.op_timeouts.get(actor).and_then(|t| t.get(op)).copied(), self.options.timeout)
    }

    fn settings(&self) -> PlanSettings {
        PlanSettings { timeout: self.options.timeout, attempt_timeout: self.options.attempt_timeout, backoff: self.options.backoff,
                       remote: self.options.remote.is_some() }
    }

    fn plan(&mut self, actor: &str, op: &str, args: &Value, opts: &CallOptions, timeout: Option<f64>) -> CallPlan {
        let idempotent = opts.idempotent.unwrap_or_else(|| self.is_idempotent(actor, op));
        let id = opts.id.unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        let now = self.now();
        let resumable = self.is_resumable(actor, op);
        CallPlan::new(id, &self.sid, actor, op, args, codec::encode(args), idempotent, self.settings(), timeout, &opts.attachments, now)
            .with_resumable(resumable)
    }

    /// Learning first, when the op's idempotency is only the actor's to tell: the call keeps
    /// the rest of its time (given none, of its op's own, which learning has just told).
    fn learn_first(&mut self, actor: &str, op: &str, opts: &CallOptions) -> Option<f64> {
        if opts.idempotent.is_none() && self.options.learn_ops && !self.learned.contains_key(actor)
            && !BUILTIN_IDEMPOTENT.contains(&op) && !self.options.idempotent_ops.contains(op) {
            let t0 = self.now();
            self.learn_ops(actor, Some(LEARN_SHARE * opts.timeout.unwrap_or(self.options.timeout)));
            let whole = opts.timeout.unwrap_or_else(|| self.call_timeout(actor, op));
            return Some((whole - (self.now() - t0)).max(0.001));
        }
        Some(opts.timeout.unwrap_or_else(|| self.call_timeout(actor, op)))
    }

    /// One call: the whole reply (body and attachments), or a classified error.
    pub fn request(&mut self, actor: &str, op: &str, args: Value, opts: CallOptions) -> Result<Reply, Error> {
        let timeout = self.learn_first(actor, op, &opts);
        let plan = self.plan(actor, op, &args, &opts, timeout);
        let id = plan.key;
        let mut out = self.drive(actor, vec![plan], 1)?;
        out.remove(&id).expect("every plan ends with an outcome")
    }

    /// One call: the reply's body.
    pub fn call(&mut self, actor: &str, op: &str, args: Value) -> Result<Value, Error> {
        self.request(actor, op, args, CallOptions::default()).map(|r| r.body)
    }

    /// One call with typed args and result: `args` encoded as a map (`rmp_serde::to_vec_named`;
    /// bytes as bin with `serde_bytes`), checked by the strict reader like any value, and the
    /// result read into `R` (a result of another shape is `bad_request`, naming the field).
    pub fn call_typed<A, R>(&mut self, actor: &str, op: &str, args: &A) -> Result<R, Error>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        let bytes = rmp_serde::to_vec_named(args).map_err(|e| local_error("bad_args", e.to_string(), actor, op))?;
        let value = codec::decode(&bytes).map_err(|e| local_error("bad_args", e.to_string(), actor, op))?;
        let body = self.call(actor, op, value)?;
        rmpv::ext::from_value(body).map_err(|e| local_error("bad_request", format!("result: {e}"), actor, op))
    }

    /// Many calls with up to `window` in flight; outcomes in call order.
    pub fn pipeline(&mut self, actor: &str, calls: Vec<(String, Value)>, window: usize) -> Result<Vec<Result<Value, Error>>, Error> {
        if let Some((op, _)) = calls.first() {
            self.learn_first(actor, op, &CallOptions::default());
        }
        let plans: Vec<CallPlan> = calls.iter()
            .map(|(op, args)| {
                let timeout = self.call_timeout(actor, op);
                self.plan(actor, op, args, &CallOptions::default(), Some(timeout))
            })
            .collect();
        let ids: Vec<u64> = plans.iter().map(|p| p.key).collect();
        let mut out = self.drive(actor, plans, window.max(1))?;
        Ok(ids.iter().map(|id| out.remove(id).unwrap().map(|r| r.body)).collect())
    }

    /// sys.hello: who answers, and its epoch (remembered; a new one is a restart).
    pub fn hello(&mut self, actor: &str) -> Result<Value, Error> {
        let client = format!("rust {}", self.sid);
        let r = self.call(actor, "sys.hello", crate::args([("client", Value::from(client))]))?;
        if get(&r, "proto").and_then(|p| p.as_i64()) != Some(1) {
            return Err(local_error("unsupported_version", format!("{actor} speaks another protocol"), actor, "sys.hello"));
        }
        Ok(r)
    }

    /// Ask `actor` which of its ops are idempotent (returned) and which resumable (see
    /// `is_resumable`); until it can say, those the schema declares idempotent count as such
    /// (`known_ops`), and none as resumable (the safe side).
    pub fn learn_ops(&mut self, actor: &str, timeout: Option<f64>) -> HashSet<String> {
        let opts = CallOptions { timeout, ..CallOptions::default() };
        match self.request(actor, "sys.info", Value::Nil, opts) {
            Ok(r) => {
                let (ops, resumable) = learned_ops(&r.body);
                self.op_timeouts.insert(actor.to_string(), declared_timeouts(&r.body));
                self.learned.insert(actor.to_string(), ops.clone());
                self.resumable.insert(actor.to_string(), resumable);
                ops
            }
            Err(_) => HashSet::new(),
        }
    }

    /// Run `plans` to their ends with at most `window` in flight.
    fn drive(&mut self, actor: &str, plans: Vec<CallPlan>, window: usize) -> Result<HashMap<u64, Result<Reply, Error>>, Error> {
        let mut queue: VecDeque<CallPlan> = plans.into();
        let mut flying: HashMap<u64, (CallPlan, Due)> = HashMap::new();
        let mut out: HashMap<u64, Result<Reply, Error>> = HashMap::new();
        self.conn(actor)?;
        // A drop told while the client was idle (the actor restarted meanwhile) is older than
        // these calls: taken now, it ends none of them, and they run on the successor.
        self.on_monitor(actor, &mut flying, &mut out)?;
        loop {
            while flying.len() < window {
                let Some(mut plan) = queue.pop_front() else { break };
                let now = self.now();
                let epoch = self.epoch(actor).map(str::to_string);
                let v = match self.seen_ended() {
                    Some(ended) => plan.start_on_ended_tree(now, &ended),
                    None => plan.start(now, self.breaker(actor), epoch.as_deref()),
                };
                self.apply(actor, plan, v, &mut flying, &mut out)?;
            }
            if flying.is_empty() && queue.is_empty() {
                return Ok(self.undelivered(actor, out));
            }
            if flying.is_empty() {
                continue;
            }
            // A blocking receive of at most one slice is the cheapest wait for a reply (as a
            // bare DEALER waits); between slices the monitor and the deadlines are looked at,
            // so a drop is noticed within a slice.
            let first = self.conns.get(actor).unwrap().sock.recv_multipart(0);
            if let Ok(frames) = first {
                self.on_reply_frames(actor, frames, &mut flying, &mut out)?;
                self.on_replies(actor, &mut flying, &mut out)?;
            }
            self.on_monitor(actor, &mut flying, &mut out)?;
            let now = self.now();
            let due: Vec<u64> = flying.iter().filter(|(_, (_, d))| match d { Due::Reply(t) | Due::Resend(t) => *t <= now }).map(|(id, _)| *id).collect();
            for id in due {
                let (mut plan, d) = flying.remove(&id).unwrap();
                let unit = self.unit();
                let v = match d {
                    Due::Reply(_) => match self.tree_gone() {
                        Some(ended) => {
                            // (a half-open breaker's probe: it told nothing of the actor)
                            self.breaker(actor).give_back();
                            plan.on_tree_gone(now, &ended, self.epoch(actor))
                        }
                        None => plan.on_timeout(now, self.breaker(actor), unit),
                    },
                    Due::Resend(_) => plan.resend(now, self.breaker(actor)),
                };
                self.apply(actor, plan, v, &mut flying, &mut out)?;
            }
        }
    }

    /// The outcomes of calls that got no reply (`timeout`, `outcome_unknown`) on a connection
    /// that never completed a handshake (a stale or wrong server key, a tree down), once its
    /// socket is closed (what it queued is dropped unsent) and its monitor read to its last
    /// event: nothing of them left this client, so they did not run, and each says so
    /// (`errors::undelivered`: `unavailable` instead of `outcome_unknown`). The next call
    /// connects anew. PROTOCOL.md section 10, "A request that never left the client". Not while
    /// a handshake is under way (`Conn::may_get_in`: a slow link): the socket is kept for the
    /// next call, and the calls keep their errors.
    fn undelivered(&mut self, actor: &str, mut out: HashMap<u64, Result<Reply, Error>>) -> HashMap<u64, Result<Reply, Error>> {
        let no_reply = |r: &Result<Reply, Error>| matches!(r, Err(e) if e.name() == "timeout" || e.name() == "outcome_unknown");
        let Some(conn) = self.conns.get(actor) else { return out };
        if conn.key_refused || conn.handshakes > 0 || conn.may_get_in() || !out.values().any(no_reply) {
            return out;
        }
        let Conn { sock, monitor, mut handshakes, mut ended_early, endpoint, .. } = self.conns.remove(actor).unwrap();
        drop(sock);
        let end = Instant::now() + Duration::from_millis(UNDELIVERED_CHECK_MS);
        let mut stopped = false;
        while !stopped {
            let left = end.saturating_duration_since(Instant::now()).as_millis() as i64;
            if left == 0 || !matches!(monitor.poll(zmq::POLLIN, left), Ok(n) if n > 0) {
                break;
            }
            let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) else { continue };
            if frames[0].len() < 2 {
                continue;
            }
            let event = u16::from_le_bytes([frames[0][0], frames[0][1]]);
            if event == zmq::SocketEvent::MONITOR_STOPPED.to_raw() {
                stopped = true;
            } else if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() {
                handshakes += 1;
            } else if event == zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw()
                || event == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw() {
                ended_early += 1;
            }
        }
        if !stopped || handshakes > 0 {
            return out;
        }
        let remote = self.endpoints.is_remote();
        let ended: Vec<u64> = out.iter().filter(|(_, r)| no_reply(r)).map(|(k, _)| *k).collect();
        for k in ended {
            if let Some(Err(e)) = out.remove(&k) {
                out.insert(k, Err(undelivered(e, &endpoint, ended_early, remote)));
            }
        }
        out
    }

    /// Act on a verdict: send, schedule, or end (recording the call's time once).
    fn apply(&mut self, actor: &str, mut plan: CallPlan, v: Verdict, flying: &mut HashMap<u64, (CallPlan, Due)>, out: &mut HashMap<u64, Result<Reply, Error>>) -> Result<(), Error> {
        match v {
            Verdict::Done(result) => {
                if let Some((micros, ok, caller)) = plan.recorded {
                    self.latency.lock().unwrap().record(actor, &plan.op, micros, ok, caller);
                }
                let conn = self.conns.get_mut(actor).unwrap();
                conn.link.finished(plan.id);
                let result = match (result, self.endpoints.client_key()) {
                    (Err(e), Some(key)) if conn.key_refused => Err(unauthorized(e, key)),
                    (r, _) => r,
                };
                out.insert(plan.key, result);
            }
            Verdict::Resend(_) if plan.renewing => {
                // A new request (calls::RENEWED): its replies come under a new id.
                let id = self.next_id;
                self.next_id += 1;
                let conn = self.conns.get_mut(actor).unwrap();
                conn.link.finished(plan.id);
                plan.renew(id, &self.sid, conn.link.epoch.as_deref());
                return self.apply(actor, plan, v, flying, out);
            }
            Verdict::Resend(delay) if delay <= 0.0 => {
                let now = self.now();
                let v = plan.resend(now, self.breaker(actor));
                return self.apply(actor, plan, v, flying, out);
            }
            Verdict::Resend(delay) => {
                // Answered with an error it is resent after (busy, stopping: not run): that
                // attempt is over, and the call is not in flight while it waits out its back-off.
                // A drop meanwhile (an actor that answered `stopping` exits a moment later) is
                // none of its business: it is sent again, to the successor.
                if plan.last_error.is_some() {
                    self.conns.get_mut(actor).unwrap().link.finished(plan.id);
                }
                let at = self.now() + delay;
                flying.insert(plan.id, (plan, Due::Resend(at)));
            }
            Verdict::Wait(until) => {
                let conn = self.conns.get_mut(actor).unwrap();
                // Sent only when the verdict is a fresh attempt (start or resend), not a re-wait.
                // EAGAIN (the socket has SNDTIMEO 0): nowhere to queue the frames, a remote
                // socket whose key was refused (Endpoints::secure) or a connection libzmq ended
                // for good. The attempt is then left to its deadline, where the plan decides.
                match conn.sock.send_multipart(plan.frames.iter(), 0) {
                    Ok(()) | Err(zmq::Error::EAGAIN) => {}
                    Err(e) => return Err(local_error("unavailable", e.to_string(), actor, &plan.op)),
                }
                conn.link.sent(plan.id);
                flying.insert(plan.id, (plan, Due::Reply(until)));
            }
        }
        Ok(())
    }

    fn on_monitor(&mut self, actor: &str, flying: &mut HashMap<u64, (CallPlan, Due)>, out: &mut HashMap<u64, Result<Reply, Error>>) -> Result<(), Error> {
        let mut dropped = false;
        {
            let conn = self.conns.get_mut(actor).unwrap();
            while let Ok(frames) = conn.monitor.recv_multipart(zmq::DONTWAIT) {
                if frames[0].len() < 2 {
                    continue;
                }
                let event = u16::from_le_bytes([frames[0][0], frames[0][1]]);
                // (each event but CONNECTED ends a handshake under way, or its connection)
                conn.handshaking = event == zmq::SocketEvent::CONNECTED.to_raw();
                if event == zmq::SocketEvent::DISCONNECTED.to_raw() {
                    dropped = true;
                } else if event == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw() {
                    conn.key_refused = true;
                } else if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() {
                    conn.key_refused = false;
                    conn.handshakes += 1;
                } else if event == zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL.to_raw()
                    || event == zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL.to_raw() {
                    conn.ended_early += 1;
                }
            }
        }
        if dropped {
            // The actor's I/O thread queues a reply before it ends the connection: a call whose
            // reply came before the drop takes it, and is not ended (or resent) by the drop.
            self.on_replies(actor, flying, out)?;
            let changes = self.conns.get_mut(actor).unwrap().link.on_disconnect();
            self.on_changes(actor, changes, flying, out)?;
        }
        // No reply can come while the tree refuses our key (libzmq does not try the handshake
        // again on that socket): every call in flight ends now, not at its deadline.
        if self.conns[actor].key_refused {
            let mut ids: Vec<u64> = flying.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                let (mut plan, _) = flying.remove(&id).unwrap();
                let now = self.now();
                let v = plan.on_refused(now, self.breaker(actor));
                self.apply(actor, plan, v, flying, out)?;
            }
        }
        Ok(())
    }

    fn on_changes(&mut self, actor: &str, changes: Vec<crate::calls::Change>, flying: &mut HashMap<u64, (CallPlan, Due)>, out: &mut HashMap<u64, Result<Reply, Error>>) -> Result<(), Error> {
        for ch in changes {
            if let Some((mut plan, _)) = flying.remove(&ch.id) {
                let now = self.now();
                self.breaker(actor).give_back();
                let gone = if ch.new_epoch.is_none() { self.tree_gone() } else { None }; // (a drop)
                let v = match gone {
                    Some(ended) => plan.on_tree_gone(now, &ended, ch.old_epoch.as_deref()),
                    None => plan.on_actor_gone(now, ch.old_epoch.as_deref(), ch.new_epoch.as_deref()),
                };
                self.apply(actor, plan, v, flying, out)?;
            }
        }
        Ok(())
    }

    /// Every reply already queued, without waiting.
    fn on_replies(&mut self, actor: &str, flying: &mut HashMap<u64, (CallPlan, Due)>, out: &mut HashMap<u64, Result<Reply, Error>>) -> Result<(), Error> {
        while let Ok(frames) = self.conns.get(actor).unwrap().sock.recv_multipart(zmq::DONTWAIT) {
            self.on_reply_frames(actor, frames, flying, out)?;
        }
        Ok(())
    }

    fn on_reply_frames(&mut self, actor: &str, frames: Vec<Vec<u8>>, flying: &mut HashMap<u64, (CallPlan, Due)>, out: &mut HashMap<u64, Result<Reply, Error>>) -> Result<(), Error> {
        {
            let reply = match decode_reply(&frames) {
                Ok(r) => r,
                Err(e) => {
                    if let Some((mut plan, _)) = e.request_id.and_then(|id| flying.remove(&id)) {
                        let now = self.now();
                        let v = plan.done(now, Err(e.error));
                        self.apply(actor, plan, v, flying, out)?;
                    }
                    return Ok(());
                }
            };
            let link = &mut self.conns.get_mut(actor).unwrap().link;
            if link.epoch.as_deref() != Some(reply.epoch.as_str()) {
                if let Some(id) = reply.id {
                    link.finished(id); // its own reply: not a victim of the change
                }
                let changes = link.on_epoch(&reply.epoch);
                self.on_changes(actor, changes, flying, out)?;
            } else {
                link.same_epoch();
            }
            if let Some((mut plan, _)) = reply.id.and_then(|id| flying.remove(&id)) {
                let now = self.now();
                let unit = self.unit();
                let v = plan.on_reply(reply, now, self.breaker(actor), unit);
                self.apply(actor, plan, v, flying, out)?;
            } else if let Some(br) = self.breakers.get_mut(actor) {
                // A reply no call waits for (its call ended before it came): the actor
                // answered, which its breaker counts as a success, as any reply (section 11).
                if br.failures > 0 || br.state != BreakerState::Closed {
                    br.record_success();
                }
            }
        }
        Ok(())
    }

    /// Subscribe to `topics` (prefixes; "" for all) of `actor`.
    pub fn subscribe(&mut self, actor: &str, topics: &[&str], opts: SubscribeOptions) -> Result<Subscription, Error> {
        // The publisher closes a connection that subscribes a longer topic, and the SUB would
        // resend it at each reconnect: every topic of the socket lost for good.
        if let Some(t) = topics.iter().find(|t| t.len() > MAX_TOPIC_LEN) {
            let head: String = t.chars().take(40).collect();
            let m = format!("{actor}: a topic of {} bytes (at most {MAX_TOPIC_LEN}): {head:?}...", t.len());
            return Err(local_error("bad_args", m, actor, "subscribe"));
        }
        let zerr = |e: zmq::Error| local_error("unavailable", format!("{actor}: {e}"), actor, "subscribe");
        let sock = self.ctx.socket(zmq::SUB).map_err(zerr)?;
        sock.set_linger(0).map_err(zerr)?;
        sock.set_reconnect_ivl(self.options.reconnect_ivl_ms).map_err(zerr)?;
        sock.set_reconnect_ivl_max(self.options.reconnect_ivl_max_ms).map_err(zerr)?;
        sock.set_maxmsgsize(MAX_MESSAGE_SIZE as i64).map_err(zerr)?;
        sock.set_rcvhwm(opts.rcvhwm.unwrap_or(STREAM_HWM)).map_err(zerr)?;
        let topics: Vec<String> = if topics.is_empty() { vec![String::new()] } else { topics.iter().map(|t| t.to_string()).collect() };
        for t in &topics {
            sock.set_subscribe(t.as_bytes()).map_err(zerr)?;
        }
        self.endpoints.secure(&sock, false).map_err(zerr)?;
        sock.connect(&self.endpoints.publisher(actor))
            .map_err(|e| local_error("bad_args", format!("{actor}: no pub socket to connect to: {e}"), actor, "subscribe"))?;
        let mut replayer = Client::with_context(self.ctx.clone(), Options {
            runtime_dir: Some(self.runtime_dir.clone()),
            sid: Some(format!("{}-r{}", self.sid, self.monitors + 1)),
            metrics_name: None,
            learn_ops: false,
            ..self.options.clone()
        })?;
        replayer.found = self.found; // (its replays are this client's calls: the same tree)
        self.monitors += 1;
        Ok(Subscription { actor: actor.to_string(), topics: topics.clone(), sock, tracker: StreamTracker::new(opts.from_seq, &topics), ready: VecDeque::new(), replayer })
    }

    /// End-to-end latency per (actor, op), microseconds, over this client's life.
    pub fn latency_report(&self) -> Vec<LatencyRow> {
        self.latency.lock().unwrap().report()
    }
}

fn random_u64(mut x: u64) -> u64 {
    // xorshift64*: enough for request jitter and a session id's randomness.
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// A new topic's first seq wanted (1: all that is retained); None: from now.
    pub from_seq: Option<u64>,
    /// The SUB's receive high-water mark (default 1000, `STREAM_HWM`).
    pub rcvhwm: Option<i32>,
}

/// Ordered, gap-repaired events of one actor's topics (section 12): `StreamEvent::Message`,
/// `Loss`, `Reset`, and `BytesLost` (terminal output only); never a `ByteGap`.
pub struct Subscription {
    pub actor: String,
    pub topics: Vec<String>,
    sock: zmq::Socket,
    pub tracker: StreamTracker,
    ready: VecDeque<StreamEvent>,
    replayer: Client,
}

impl Subscription {
    /// The SUB's receive high-water mark: at most this many messages wait here unread
    /// (`STREAM_HWM` unless `SubscribeOptions::rcvhwm` says otherwise; PROTOCOL.md section
    /// 15); what comes past it is dropped, a gap `next` repairs or reports.
    pub fn rcvhwm(&self) -> Result<i32, Error> {
        self.sock.get_rcvhwm().map_err(|e| local_error("unavailable", format!("{}: {e}", self.actor), &self.actor, "subscribe"))
    }

    /// True once every subscribed prefix's round of welcomes has ended.
    pub fn live(&self) -> bool {
        self.topics.iter().all(|t| self.tracker.live.contains(t))
    }

    /// Until every prefix is live; the events meanwhile are kept for `next`, and returned.
    pub fn until_live(&mut self, timeout: Duration) -> Result<Vec<StreamEvent>, Error> {
        let end = Instant::now() + timeout;
        let mut early = Vec::new();
        while !self.live() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(local_error("timeout", format!("{}: subscription not live", self.actor), &self.actor, "subscribe"));
            }
            if let Some(ev) = self.next(Some(left.min(Duration::from_millis(50))))? {
                early.push(ev);
            }
        }
        for ev in early.iter().rev() {
            self.ready.push_front(ev.clone());
        }
        Ok(early)
    }

    /// Ask for what may have been lost at the end of a burst (the stream went quiet): the
    /// events, if any, come from `next` (section 12, "Tail loss").
    pub fn catch_up(&mut self) {
        for n in self.tracker.catch_up() {
            self.replay(n.topic, n.from_seq, None);
        }
    }

    /// The time of one replay page asked for by a `next()` that must return by `end` (None:
    /// no bound, the client's timeout): what is left of it, never more than a call's timeout,
    /// and at least one attempt's, so that a caller polling with a zero timeout still gets a
    /// gap repaired rather than reported lost.
    fn replay_timeout(&self, end: Option<Instant>) -> Option<f64> {
        page_timeout(&self.replayer.options, end)
    }

    fn replay(&mut self, topic: String, from: u64, end: Option<Instant>) {
        let mut need = Some((topic, from));
        while let Some((topic, from)) = need.take() {
            let args = crate::args([("topic", Value::from(topic.as_str())), ("from_seq", Value::from(from))]);
            let opts = CallOptions { timeout: self.replay_timeout(end), ..CallOptions::default() };
            match self.replayer.request(&self.actor, "replay", args, opts) {
                Ok(r) => {
                    let (events, more) = self.tracker.on_replay(&topic, &r.body, &r.attachments);
                    self.ready.extend(events);
                    need = more.map(|n| (n.topic, n.from_seq));
                }
                Err(_) => {
                    let (events, more) = self.tracker.replay_failed(&topic);
                    self.ready.extend(events);
                    need = more.map(|n| (n.topic, n.from_seq));
                }
            }
        }
    }

    /// Terminal output skipped with no seq missing (section 12, "Byte streams"): asked of
    /// the terminal's scrollback, by `end` as a replay is; what it no longer holds, or could
    /// not give, is a `BytesLost`. The fill's events go first in `ready` however it ends (a
    /// panic unwinding included: the rest reported lost), so the gap is never left
    /// undelivered.
    fn fill(&mut self, gap: ByteGap, end: Option<Instant>) {
        let mut filling = Filling { fill: GapFill::new(gap), ready: &mut self.ready };
        while let Some(args) = filling.fill.ask() {
            let opts = CallOptions { timeout: page_timeout(&self.replayer.options, end), ..CallOptions::default() };
            match self.replayer.request(&self.actor, "term.scrollback", args, opts) {
                Ok(r) => filling.fill.take(&r.body, &r.attachments),
                Err(_) => filling.fill.failed(),
            }
        }
    }

    /// The next event, or None when `timeout` passes with none (None timeout: wait).
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Option<StreamEvent>, Error> {
        let end = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(ev) = self.ready.pop_front() {
                let StreamEvent::ByteGap(gap) = ev else { return Ok(Some(ev)) };
                self.fill(gap, end); // (its events, then the message after the gap, are next)
                continue;
            }
            let wait_ms = match end {
                None => -1,
                Some(e) => e.saturating_duration_since(Instant::now()).as_millis() as i64,
            };
            let n = self.sock.poll(zmq::POLLIN, wait_ms).map_err(|e| local_error("unavailable", e.to_string(), &self.actor, "subscribe"))?;
            if n == 0 {
                return Ok(None);
            }
            let frames = match self.sock.recv_multipart(zmq::DONTWAIT) {
                Ok(f) => f,
                Err(_) => continue,
            };
            let Ok(msg) = decode_stream(&frames) else { continue };
            let (events, need) = self.tracker.on_message(msg);
            self.ready.extend(events);
            if let Some(n) = need {
                self.replay(n.topic, n.from_seq, end);
            }
        }
    }
}

/// The time of one page (a replay's, a scrollback's) asked for by a `next()` that must return
/// by `end`: see `Subscription::replay_timeout`.
fn page_timeout(opts: &Options, end: Option<Instant>) -> Option<f64> {
    end.map(|e| opts.timeout.min(opts.attempt_timeout.max(e.saturating_duration_since(Instant::now()).as_secs_f64())))
}

/// A gap being filled: on drop its events go to the front of the subscription's queue, the
/// rest of the gap reported lost when the fill did not end (a panic unwinding through it).
struct Filling<'a> {
    fill: GapFill,
    ready: &'a mut VecDeque<StreamEvent>,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.fill.failed(); // (nothing once the whole gap is delivered or lost)
        for ev in self.fill.events.drain(..).rev() {
            self.ready.push_front(ev);
        }
    }
}

impl Iterator for Subscription {
    type Item = Result<StreamEvent, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        Subscription::next(self, None).transpose()
    }
}
