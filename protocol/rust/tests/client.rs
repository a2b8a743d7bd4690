//! The client over real sockets, against fake actors in this process: an actor's life is a
//! ROUTER in a context of its own (its end, the context's, closes every connection of it, as
//! a process's death does); a remote tree is a CURVE server on loopback tcp.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use moorage_client::envelope::{decode_request, encode_error, encode_reply, encode_stream, Request};
use moorage_client::errors::WireError;
use moorage_client::limits::MAX_MESSAGE_SIZE;
use moorage_client::{CallOptions, Client, CurveKeys, Options, Remote, StreamEvent, SubscribeOptions, Value};

const A: &str = "aaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccc";

/// A directory of this test's own (short: an ipc path must fit in 107 bytes).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mrc-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn client(dir: &Path, timeout: f64) -> Client {
    Client::new(Options { runtime_dir: Some(dir.to_path_buf()), learn_ops: false, timeout, ..Options::default() }).unwrap()
}

/// One life of the actor `alpha`, answering with `epoch`.
struct Life {
    sock: zmq::Socket,
    accepted: zmq::Socket,
    epoch: &'static str,
    _ctx: zmq::Context,
}

impl Life {
    fn bind(ep: &str, epoch: &'static str) -> Life {
        let ctx = zmq::Context::new();
        let sock = ctx.socket(zmq::ROUTER).unwrap();
        sock.set_linger(0).unwrap();
        sock.set_rcvtimeo(5000).unwrap();
        let addr = format!("inproc://life-{epoch}");
        sock.monitor(&addr, zmq::SocketEvent::ACCEPTED as i32).unwrap();
        let accepted = ctx.socket(zmq::PAIR).unwrap();
        accepted.set_rcvtimeo(5000).unwrap();
        accepted.connect(&addr).unwrap();
        sock.bind(ep).unwrap();
        Life { sock, accepted, epoch, _ctx: ctx }
    }

    /// Until the client connected to this life: it was told of the drop of the one before.
    fn wait_accepted(&self) {
        self.accepted.recv_multipart(0).expect("the client never connected");
    }

    fn take(&self) -> (Vec<u8>, Request) {
        let mut frames = self.sock.recv_multipart(0).expect("no request came");
        let rid = frames.remove(0);
        (rid, decode_request(&frames).unwrap())
    }

    fn answer(&self, rid: Vec<u8>, id: u64, epoch: &str, body: Value) {
        let mut frames = vec![rid];
        frames.extend(encode_reply(Some(id), epoch, &body, &[]));
        self.sock.send_multipart(frames, 0).unwrap();
    }

    /// Answer `n` requests, each after `takes` (the op's own time).
    fn serve(self, n: usize, takes: Duration) -> thread::JoinHandle<Life> {
        thread::spawn(move || {
            for _ in 0..n {
                let (rid, req) = self.take();
                thread::sleep(takes);
                self.answer(rid, req.id, self.epoch, Value::from("done"));
            }
            self
        })
    }

    /// The process ends: the context's end closes its connections and unlinks its endpoint.
    fn end(self) {}
}

#[test]
fn a_drop_told_while_the_client_was_idle_ends_none_of_the_calls_sent_after_it() {
    let dir = scratch("idle-drop");
    let ep = format!("ipc://{}/alpha.rpc", dir.display());
    let mut c = client(&dir, 5.0);
    let idempotent_no = || CallOptions { idempotent: Some(false), ..CallOptions::default() };
    let first = Life::bind(&ep, A).serve(1, Duration::ZERO);
    c.call("alpha", "sys.ping", Value::Nil).unwrap();
    first.join().unwrap().end(); // the actor restarts while the client is idle

    let second = Life::bind(&ep, B);
    second.wait_accepted();
    // An op that outlasts the client's first wait slice: the monitor is looked at before the
    // reply comes.
    let second = second.serve(1, Duration::from_millis(50));
    let r = c.request("alpha", "fs.write", Value::Nil, idempotent_no());
    second.join().unwrap().end();
    assert_eq!(r.map(|r| r.body).map_err(|e| e.to_string()), Ok(Value::from("done")));

    // The same through a pipeline, whose first reply shows the new epoch while the second
    // call is still in flight.
    let third = Life::bind(&ep, C);
    third.wait_accepted();
    let third = third.serve(2, Duration::ZERO);
    let out = c.pipeline("alpha", vec![("fs.write".into(), Value::Nil), ("fs.write".into(), Value::Nil)], 2).unwrap();
    third.join().unwrap().end();
    let out: Vec<_> = out.into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
    assert_eq!(out, vec![Ok(Value::from("done")), Ok(Value::from("done"))]);
    assert_eq!(c.restarts_seen("alpha"), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reply_that_comes_after_its_call_ended_is_a_success_to_the_actor_s_breaker() {
    let dir = scratch("late-reply");
    let ep = format!("ipc://{}/alpha.rpc", dir.display());
    // Two failures would open it: the first call's, then the second's, unless the late reply
    // between them counts as the success it is (section 11).
    let mut c = Client::new(Options {
        runtime_dir: Some(dir.clone()), learn_ops: false, timeout: 0.3, attempt_timeout: 0.3,
        breaker_threshold: 2, breaker_cooldown: 60.0, ..Options::default()
    }).unwrap();
    let life = Life::bind(&ep, A);
    let actor = thread::spawn(move || {
        let (rid, first) = life.take();
        life.take(); // the second call is at the actor, which answers the first one now
        life.answer(rid, first.id, A, Value::from("late"));
        life
    });
    let idempotent = CallOptions { idempotent: Some(true), ..CallOptions::default() };
    let e = c.request("alpha", "fs.read", Value::Nil, idempotent).unwrap_err();
    assert_eq!(e.error.name, "timeout"); // (one attempt, to its deadline: one failure)
    let once = CallOptions { idempotent: Some(false), timeout: Some(1.0), ..CallOptions::default() };
    let e = c.request("alpha", "fs.write", Value::Nil, once).unwrap_err();
    assert_eq!(e.error.name, "outcome_unknown");
    actor.join().unwrap().end();
    assert_eq!(c.breaker_state("alpha"), moorage_client::BreakerState::Closed);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_restart_heard_in_a_reply_after_a_drop_the_life_outlived_ends_what_was_sent_before_it() {
    let dir = scratch("same-life");
    let ep = format!("ipc://{}/alpha.rpc", dir.display());
    let mut c = client(&dir, 3.0);
    let life = Life::bind(&ep, A).serve(1, Duration::ZERO);
    c.call("alpha", "sys.ping", Value::Nil).unwrap();
    life.join().unwrap().end();
    // The connection comes back to the same life (as a tcp link that dropped under it would)
    let same = Life::bind(&ep, A);
    same.wait_accepted();
    let same = same.serve(1, Duration::ZERO);
    c.call("alpha", "sys.ping", Value::Nil).unwrap();
    let same = same.join().unwrap();

    // ... and later a successor answers one call while another, sent before, is in flight:
    // its drop was missed.
    let answering = thread::spawn(move || {
        let taken = [same.take(), same.take()];
        let (rid, ping) = taken.into_iter().find(|(_, r)| r.op == "sys.ping").unwrap();
        same.answer(rid, ping.id, B, Value::from("pong"));
        same
    });
    let t0 = Instant::now();
    let out = c.pipeline("alpha", vec![("fs.write".into(), Value::Nil), ("sys.ping".into(), Value::Nil)], 2).unwrap();
    answering.join().unwrap().end();
    assert_eq!(out[1].as_ref().map_err(|e| e.to_string()), Ok(&Value::from("pong")));
    let e = out[0].as_ref().unwrap_err();
    assert_eq!(e.name(), "outcome_unknown");
    assert_eq!(e.detail().and_then(|d| moorage_client::codec::get(d, "new_epoch")), Some(&Value::from(B)), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "ended at its deadline, not at the restart: {e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

extern "C" {
    fn flock(fd: i32, operation: i32) -> i32;
}

#[test]
fn a_runtime_dir_others_can_write_is_forbidden_and_nothing_is_sent_there() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::io::AsRawFd;
    let dir = scratch("open");
    let file = dir.join("tree.json");
    let doc = serde_json::json!({"moorage": "ready", "runtime_dir": dir, "endpoints": {}});
    std::fs::write(&file, doc.to_string()).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    assert_eq!(unsafe { flock(lock.as_raw_fd(), 2 | 4) }, 0); // held, as a live tree's is
    assert!(Client::from_connection_file(&file, Options::default()).is_ok());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    match Client::from_connection_file(&file, Options::default()) {
        Ok(_) => panic!("trusted a runtime dir anyone can write"),
        Err(e) => assert_eq!(e.name(), "forbidden", "{e}"),
    }
    drop(lock);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_runtime_dir_given_that_others_can_write_is_forbidden() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("given");
    let given = || Client::new(Options { runtime_dir: Some(dir.clone()), ..Options::default() });
    assert!(given().is_ok(), "the user's own dir, no tree there yet: a client of it");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    match given() {
        Ok(_) => panic!("trusted a runtime dir anyone can write"),
        Err(e) => assert_eq!(e.name(), "forbidden", "{e}"),
    }
    let link = dir.with_extension("link");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    match Client::new(Options { runtime_dir: Some(link.clone()), ..Options::default() }) {
        Ok(_) => panic!("followed a link to a runtime dir"),
        Err(e) => assert_eq!(e.name(), "forbidden", "{e}"),
    }
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn with_no_tree_holding_the_instance_lock_a_client_is_not_running_at_once() {
    let not_running = |made: Result<Client, moorage_client::Error>| match made {
        Ok(_) => panic!("made a client of a tree that does not run"),
        Err(e) => assert_eq!(e.name(), "not_running", "{e}"),
    };
    let t0 = Instant::now();
    not_running(Client::new(Options { instance: Some(format!("none-{}", std::process::id())), ..Options::default() }));

    let dir = scratch("lock");
    let file = dir.join("tree.json");
    let doc = serde_json::json!({"moorage": "ready", "runtime_dir": dir, "endpoints": {}});
    std::fs::write(&file, doc.to_string()).unwrap();
    not_running(Client::from_connection_file(&file, Options::default())); // no lock file
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    not_running(Client::from_connection_file(&file, Options::default())); // a lock nobody holds
    assert!(t0.elapsed() < Duration::from_secs(1));

    use std::os::unix::io::AsRawFd;
    assert_eq!(unsafe { flock(lock.as_raw_fd(), 2 | 4) }, 0); // LOCK_EX | LOCK_NB: a tree's root
    let c = Client::from_connection_file(&file, Options::default()).unwrap();
    assert_eq!(c.runtime_dir, dir);
    drop(lock); // the root ends
    not_running(Client::from_connection_file(&file, Options::default()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn over_tcp_a_frame_of_the_whole_limit_gets_through_curve_both_ways() {
    let (server, mine) = (zmq::CurveKeyPair::new().unwrap(), zmq::CurveKeyPair::new().unwrap());
    let z85 = |k: &[u8]| zmq::z85_encode(k).unwrap();
    let ctx = zmq::Context::new();
    let curve_server = |kind| {
        let s = ctx.socket(kind).unwrap();
        s.set_linger(0).unwrap();
        s.set_rcvtimeo(5000).unwrap();
        s.set_curve_server(true).unwrap();
        s.set_curve_secretkey(&server.secret_key).unwrap();
        s.bind("tcp://127.0.0.1:*").unwrap();
        let at = s.get_last_endpoint().unwrap().unwrap();
        (s, at)
    };
    let (router, rpc) = curve_server(zmq::ROUTER);
    let (xpub, publisher) = curve_server(zmq::XPUB);
    let dir = scratch("curve");
    let file = dir.join("tree.json");
    let remote = serde_json::json!({"transport": "tcp", "curve": true, "server_key": z85(&server.public_key),
                                    "endpoints": {"alpha": {"rpc": rpc, "pub": publisher}}});
    std::fs::write(&file, serde_json::json!({"runtime_dir": "/nonexistent", "remote": remote}).to_string()).unwrap();
    let keys = CurveKeys { public: z85(&mine.public_key), secret: z85(&mine.secret_key) };
    let mut c = Client::new(Options {
        remote: Some(Remote { connection_file: file, keys: Some(keys), host: None }), learn_ops: false, timeout: 3.0,
        ..Options::default()
    }).unwrap();
    // A body frame of exactly the limit: CURVE makes it 33 bytes more on the wire.
    let big = Value::Binary(vec![7; MAX_MESSAGE_SIZE - 5]);

    let body = big.clone();
    let answering = thread::spawn(move || {
        let mut frames = router.recv_multipart(0).expect("no request came");
        let rid = frames.remove(0);
        let req = decode_request(&frames).unwrap();
        let mut out = vec![rid];
        out.extend(encode_reply(Some(req.id), A, &body, &[]));
        assert_eq!(out[3].len(), MAX_MESSAGE_SIZE);
        router.send_multipart(out, 0).unwrap();
        router
    });
    let r = c.call("alpha", "sys.ping", Value::Nil).map_err(|e| e.to_string());
    drop(answering.join().unwrap());
    assert!(r.as_ref().is_ok_and(|v| *v == big), "{:?}", r.map(|_| "a body of another size"));

    let mut sub = c.subscribe("alpha", &["t"], SubscribeOptions::default()).unwrap();
    assert_eq!(xpub.recv_bytes(0).expect("no subscription came"), b"\x01t");
    xpub.send_multipart(encode_stream("t", 1, A, &big, &[]), 0).unwrap();
    match sub.next(Some(Duration::from_secs(5))).unwrap() {
        Some(StreamEvent::Message(m)) => assert_eq!((m.seq, m.body == big), (1, true)),
        other => panic!("the message did not get through: {:?}", other.map(|_| "another event")),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_call_on_a_connection_that_never_got_in_says_nothing_was_delivered_never_outcome_unknown() {
    // A CURVE server whose key is not the connection file's (a stale file: the tree's keys
    // were remade): it cannot read the client's handshake, and closes each connection.
    let (server, stale, mine) = (zmq::CurveKeyPair::new().unwrap(), zmq::CurveKeyPair::new().unwrap(), zmq::CurveKeyPair::new().unwrap());
    let z85 = |k: &[u8]| zmq::z85_encode(k).unwrap();
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.set_curve_server(true).unwrap();
    router.set_curve_secretkey(&server.secret_key).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let rpc = router.get_last_endpoint().unwrap().unwrap();
    let dir = scratch("never-in");
    let file = dir.join("tree.json");
    let remote = serde_json::json!({"transport": "tcp", "curve": true, "server_key": z85(&stale.public_key),
                                    "endpoints": {"alpha": {"rpc": rpc, "pub": rpc}}});
    std::fs::write(&file, serde_json::json!({"runtime_dir": "/nonexistent", "remote": remote}).to_string()).unwrap();
    let keys = CurveKeys { public: z85(&mine.public_key), secret: z85(&mine.secret_key) };
    let mut c = Client::new(Options {
        remote: Some(Remote { connection_file: file, keys: Some(keys), host: None }), learn_ops: false, timeout: 1.0,
        ..Options::default()
    }).unwrap();
    let once = CallOptions { idempotent: Some(false), ..CallOptions::default() };
    let e = c.request("alpha", "fs.write", Value::Nil, once.clone()).unwrap_err();
    assert_eq!(e.name(), "unavailable", "{e}");
    for said in ["nothing was delivered", rpc.as_str(), "server_key is likely stale"] {
        assert!(e.error.message.contains(said), "{e}");
    }
    assert_eq!(e.detail().and_then(|d| moorage_client::codec::get(d, "delivered")), Some(&Value::from(false)), "{e}");
    let read = CallOptions { idempotent: Some(true), ..CallOptions::default() };
    let e = c.request("alpha", "sys.ping", Value::Nil, read).unwrap_err();
    assert_eq!(e.name(), "timeout", "{e}");
    assert!(e.error.message.contains("nothing was delivered"), "{e}");
    router.set_rcvtimeo(0).unwrap();
    assert!(router.recv_multipart(0).is_err(), "a request reached the server");

    // On ipc, nothing listening where the actor would be
    let mut c = client(&dir, 1.0);
    let e = c.request("alpha", "fs.write", Value::Nil, once).unwrap_err();
    assert_eq!(e.name(), "unavailable", "{e}");
    assert!(e.error.message.contains("the actor is not running there"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Milliseconds from now to a request's deadline.
fn left_ms(req: &Request) -> i64 {
    req.deadline_ms.unwrap() - moorage_client::calls::unix_ms()
}

#[test]
fn a_call_given_no_timeout_carries_its_op_s_declared_timeout_at_most_60_s_a_given_one_as_given() {
    let dir = scratch("op-timeouts");
    let life = Life::bind(&format!("ipc://{}/alpha.rpc", dir.display()), A);
    let mut c = Client::new(Options { runtime_dir: Some(dir.clone()), timeout: 1.0, ..Options::default() }).unwrap();
    let fake = thread::spawn(move || {
        let mut left = Vec::new();
        while left.len() < 4 {
            let (rid, req) = life.take();
            if req.op == "sys.info" {
                let op = |ms: i64| Value::Map(vec![(Value::from("timeout_ms"), Value::from(ms)), (Value::from("idempotent"), Value::from(false))]);
                let ops = Value::Map(vec![(Value::from("alpha.make"), op(30_000)), (Value::from("alpha.run"), op(86_400_000))]);
                life.answer(rid, req.id, A, Value::Map(vec![(Value::from("ops"), ops)]));
                continue;
            }
            left.push((req.op.clone(), left_ms(&req)));
            life.answer(rid, req.id, A, Value::from("done"));
        }
        left
    });
    c.call("alpha", "alpha.make", Value::Nil).unwrap();
    c.call("alpha", "alpha.run", Value::Nil).unwrap();
    c.request("alpha", "alpha.make", Value::Nil, CallOptions { timeout: Some(2.0), ..CallOptions::default() }).unwrap();
    c.call("alpha", "alpha.other", Value::Nil).unwrap();
    let left = fake.join().unwrap();
    let ms: Vec<i64> = left.iter().map(|(_, ms)| *ms).collect();
    assert!(29_000 < ms[0] && ms[0] <= 30_500, "declared 30 s: {left:?}");
    assert!(59_000 < ms[1] && ms[1] <= 60_000, "a day, capped: {left:?}");
    assert!(1_000 < ms[2] && ms[2] <= 2_000, "given: {left:?}");
    assert!(ms[3] <= 1_000, "not declared, the client's: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn session_busy_is_resent_as_a_new_request_a_fresh_id_the_same_deadline_until_its_budget_ends() {
    let dir = scratch("session-busy");
    let life = Life::bind(&format!("ipc://{}/alpha.rpc", dir.display()), A);
    let mut c = client(&dir, 10.0);
    // Refused twice, then run; then refused for good (past the budget of 3 resends).
    let fake = thread::spawn(move || {
        let mut seen = Vec::new();
        for i in 0..7 {
            let (rid, req) = life.take();
            seen.push((req.id, req.deadline_ms));
            if i == 2 {
                life.answer(rid, req.id, A, Value::from("ran"));
            } else {
                let mut frames = vec![rid];
                frames.extend(encode_error(Some(req.id), A, &WireError::of("session_busy", "a command is running")));
                life.sock.send_multipart(frames, 0).unwrap();
            }
        }
        seen
    });
    let ran = c.call("alpha", "alpha.exec", Value::Nil).map_err(|e| e.to_string());
    let refused = c.call("alpha", "alpha.exec", Value::Nil).unwrap_err();
    let seen = fake.join().unwrap();
    assert_eq!(ran, Ok(Value::from("ran")));
    assert_eq!((refused.error.name.as_str(), refused.attempts), ("session_busy", 4));
    let ids: std::collections::HashSet<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 7, "each resend a new request: {seen:?}");
    assert!(seen[..3].iter().all(|(_, d)| *d == seen[0].1), "one deadline: {seen:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A scratch directory (`scratch`) removed when the test ends, failed or not.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        Dir(scratch(name))
    }

    fn rpc(&self) -> String {
        format!("ipc://{}/alpha.rpc", self.0.display())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_call_refused_stopping_or_busy_is_sent_to_the_successor_when_the_refusing_life_ends_during_its_back_off() {
    for refusal in ["stopping", "busy"] {
        let dir = Dir::new(&format!("refused-{refusal}"));
        let mut c = client(&dir.0, 10.0);
        let (ep, first) = (dir.rpc(), Life::bind(&dir.rpc(), A));
        let fake = thread::spawn(move || {
            let (rid, ping) = first.take();
            first.answer(rid, ping.id, A, Value::from("pong"));
            let (rid, req) = first.take();
            // A back-off far longer than the client takes to notice the drop: the drop comes
            // while the call waits it out.
            let e = WireError::of(refusal, "alpha is on its way out").with_retry_after(1500);
            let mut frames = vec![rid];
            frames.extend(encode_error(Some(req.id), A, &e));
            first.sock.set_linger(5000).unwrap(); // (the refusal goes out before the connection ends)
            first.sock.send_multipart(frames, 0).unwrap();
            first.end(); // the actor exits a moment after its refusal
            let second = Life::bind(&ep, B);
            let (rid, again) = second.take();
            second.answer(rid, again.id, B, Value::from("ran once"));
            (req, again, second)
        });
        c.call("alpha", "sys.ping", Value::Nil).unwrap(); // the life the refusal comes from is known
        let once = CallOptions { idempotent: Some(false), ..CallOptions::default() };
        let r = c.request("alpha", "fs.write", Value::Nil, once);
        assert_eq!(r.as_ref().map(|r| &r.body).map_err(|e| e.to_string()), Ok(&Value::from("ran once")), "refused {refusal}");
        let (req, again, second) = fake.join().unwrap();
        assert_eq!((again.id, again.epoch), (req.id, None), "the same request, not pinned: {refusal}");
        assert_eq!(c.restarts_seen("alpha"), 1);
        second.end();
    }
}

#[test]
fn a_call_to_a_connection_libzmq_ended_for_good_ends_at_its_deadline_never_blocked_in_send() {
    let dir = Dir::new("ended-link");
    let life = Life::bind(&dir.rpc(), A);
    let c = Client::new(Options {
        runtime_dir: Some(dir.0.clone()), learn_ops: false, timeout: 1.5, attempt_timeout: 0.5, ..Options::default()
    }).unwrap();
    // A reply frame over the client's MAXMSGSIZE: libzmq ends the connection as a protocol error
    // and never makes it again, so the DEALER has nowhere to queue a request from then on.
    let fake = thread::spawn(move || {
        let (rid, req) = life.take();
        let mut frames = vec![rid];
        frames.extend(encode_reply(Some(req.id), A, &Value::Binary(vec![0; MAX_MESSAGE_SIZE + 16]), &[]));
        life.sock.send_multipart(frames, 0).unwrap();
        life
    });
    // The calls run on a thread of their own: one blocked in send for good fails the test
    // instead of hanging it.
    let (told, outcomes) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut c = c;
        // (the first is resent after the drop, the others are sent after it: each ends as its
        // plan says at its deadline, a call that may have run outcome_unknown)
        for (op, idempotent) in [("sys.ping", true), ("sys.ping", true), ("fs.write", false)] {
            let opts = CallOptions { idempotent: Some(idempotent), ..CallOptions::default() };
            let r = c.request("alpha", op, Value::Nil, opts);
            if told.send(r.map(|_| ()).map_err(|e| (e.error.name, e.attempts))).is_err() {
                return;
            }
        }
    });
    let mut ended = Vec::new();
    for n in 0..3 {
        // (a bound on a hang, many times the calls' 1.5 s: no timing is asserted)
        match outcomes.recv_timeout(Duration::from_secs(30)) {
            Ok(r) => ended.push(r),
            Err(_) => panic!("call {n} still not ended 30 s later (its timeout: 1.5 s); ended before it: {ended:?}"),
        }
    }
    let names: Vec<_> = ended.iter().map(|r| r.as_ref().map_err(|(name, _)| name.as_str())).collect();
    assert_eq!(names, vec![Err("timeout"), Err("timeout"), Err("outcome_unknown")], "{ended:?}");
    fake.join().unwrap().end();
}

/// A bad option is refused by name (`bad_args`), before the client looks for a tree: given
/// no directory, it would otherwise say `not_running`.
#[test]
fn a_bad_option_is_refused_by_name_before_any_tree_is_looked_for() {
    let bad: Vec<(&str, Options)> = vec![
        ("timeout", Options { timeout: 0.0, ..Options::default() }),
        ("timeout", Options { timeout: f64::NAN, ..Options::default() }),
        ("timeout", Options { timeout: f64::INFINITY, ..Options::default() }),
        ("attempt_timeout", Options { attempt_timeout: -1.0, ..Options::default() }),
        ("breaker_cooldown", Options { breaker_cooldown: -0.5, ..Options::default() }),
        ("breaker_threshold", Options { breaker_threshold: 0, ..Options::default() }),
        ("reconnect_ivl_ms", Options { reconnect_ivl_ms: -1, ..Options::default() }),
        ("reconnect_ivl_max_ms", Options { reconnect_ivl_max_ms: -5, ..Options::default() }),
        ("metrics_interval", Options { metrics_interval: Duration::ZERO, ..Options::default() }),
    ];
    for (name, options) in bad {
        let e = Client::new(options).err().unwrap_or_else(|| panic!("{name}: taken"));
        assert_eq!(e.error.name, "bad_args", "{name}");
        assert!(e.error.message.starts_with(&format!("Options.{name} must be")), "{name}: {}", e.error.message);
    }
    let dir = scratch("options");
    let good = Options { runtime_dir: Some(dir.clone()), timeout: 0.5, breaker_cooldown: 0.0, reconnect_ivl_ms: 0, ..Options::default() };
    assert!(Client::new(good).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}
