//! A remote call that ends with no reply while its connection's CURVE handshake is still under
//! way (a slow link: some three round trips, over 200 ms each way longer than a replay page's
//! 1 s) leaves that connection to get in: the call keeps its error (`timeout`, or
//! `outcome_unknown`: its request is still queued, and goes once the handshake completes), and
//! the next call is answered on it. Closing the socket to say "nothing was delivered" threw the
//! handshake away: every call then began a new one, no faster, and on such a link none was ever
//! answered.
//!
//! A CURVE server on loopback tcp, reached through a relay that holds each new connection
//! (nothing passes either way) until the test lets the ones open now through: a link whose
//! handshake takes as long as the test says, with no clock in it.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use moorage_client::envelope::{decode_request, encode_reply};
use moorage_client::{CallOptions, Client, CurveKeys, Options, Remote, Value};

const A: &str = "aaaaaaaaaaaaaaaa";

/// Connections accepted and not yet let through, and a wake-up for `holding`.
type Held = Arc<(Mutex<Vec<TcpStream>>, Condvar)>;

/// A tcp relay to `target` on which a new connection is accepted and then gets nowhere (its
/// bytes left unread, the far end not even opened) until `release`. Dropped, it ends every
/// connection it holds or carries and waits for its threads.
struct HeldRelay {
    port: u16,
    target: u16,
    held: Held,
    /// Both ends of each connection let through, to shut down when the relay is dropped.
    open: Vec<TcpStream>,
    copies: Vec<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl HeldRelay {
    fn new(target: u16) -> HeldRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held: Held = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (held.clone(), stop.clone());
        let acceptor = thread::spawn(move || {
            for sock in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(sock) = sock {
                    h.0.lock().unwrap().push(sock);
                    h.1.notify_all();
                }
            }
        });
        HeldRelay { port, target, held, open: Vec::new(), copies: Vec::new(), stop, acceptor: Some(acceptor) }
    }

    /// Until at least one connection is held; false if none is within `within`.
    fn holding(&self, within: Duration) -> bool {
        let (lock, cv) = &*self.held;
        let (held, _) = cv.wait_timeout_while(lock.lock().unwrap(), within, |h| h.is_empty()).unwrap();
        !held.is_empty()
    }

    /// Let the connections held now through (those made later stay held); how many.
    fn release(&mut self) -> usize {
        let held = std::mem::take(&mut *self.held.0.lock().unwrap());
        for near in &held {
            let far = TcpStream::connect(("127.0.0.1", self.target)).unwrap();
            for (mut from, mut to) in [(near.try_clone().unwrap(), far.try_clone().unwrap()),
                                       (far.try_clone().unwrap(), near.try_clone().unwrap())] {
                self.copies.push(thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both); // (one end gone: the other goes too)
                }));
            }
            self.open.push(near.try_clone().unwrap());
            self.open.push(far);
        }
        held.len()
    }
}

impl Drop for HeldRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // (wakes the acceptor to stop)
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for sock in self.open.iter().chain(self.held.0.lock().unwrap().iter()) {
            let _ = sock.shutdown(Shutdown::Both);
        }
        for copy in self.copies.drain(..) {
            let _ = copy.join();
        }
    }
}

/// A CURVE server on loopback tcp answering every request "pong", in a thread until dropped.
struct Server {
    port: u16,
    public_key: [u8; 32],
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let keys = zmq::CurveKeyPair::new().unwrap();
        let ctx = zmq::Context::new();
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.set_curve_server(true).unwrap();
        router.set_curve_secretkey(&keys.secret_key).unwrap();
        // (how often the thread looks whether it is to stop)
        router.set_rcvtimeo(50).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let port = endpoint.rsplit(':').next().unwrap().parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let _ctx = ctx;
            while !s.load(Ordering::SeqCst) {
                let Ok(mut frames) = router.recv_multipart(0) else { continue };
                let rid = frames.remove(0);
                let Ok(req) = decode_request(&frames) else { continue };
                let mut reply = vec![rid];
                reply.extend(encode_reply(Some(req.id), A, &Value::from("pong"), &[]));
                let _ = router.send_multipart(reply, 0);
            }
        });
        Server { port, public_key: keys.public_key, stop, thread: Some(thread) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A directory of the test's own, removed when dropped.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_read_that_times_out_mid_handshake_and_an_effect_leave_the_connection_to_the_next_call() {
    let server = Server::start();
    let mut relay = HeldRelay::new(server.port);
    let dir = Dir(std::env::temp_dir().join(format!("mrc-{}-slow-handshake", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("tree.json");
    let z85 = |k: &[u8]| zmq::z85_encode(k).unwrap();
    let rpc = format!("tcp://127.0.0.1:{}", relay.port);
    let remote = serde_json::json!({"transport": "tcp", "curve": true, "server_key": z85(&server.public_key),
                                    "endpoints": {"alpha": {"rpc": rpc, "pub": rpc}}});
    std::fs::write(&file, serde_json::json!({"runtime_dir": "/nonexistent", "remote": remote}).to_string()).unwrap();
    let mine = zmq::CurveKeyPair::new().unwrap();
    let keys = CurveKeys { public: z85(&mine.public_key), secret: z85(&mine.secret_key) };
    let mut c = Client::new(Options {
        remote: Some(Remote { connection_file: file, keys: Some(keys), host: None }), learn_ops: false, timeout: 10.0,
        ..Options::default()
    }).unwrap();

    let read = CallOptions { idempotent: Some(true), timeout: Some(1.0), ..CallOptions::default() };
    let e = c.request("alpha", "sys.ping", Value::Nil, read).unwrap_err(); // (as a replay page after a reset)
    assert_eq!(e.name(), "timeout", "{e}");
    assert!(!e.error.message.contains("nothing was delivered"), "{e}");
    // its request is still queued on a connection that may yet get in: not "not run"
    let once = CallOptions { idempotent: Some(false), timeout: Some(1.0), ..CallOptions::default() };
    let e = c.request("alpha", "fs.write", Value::Nil, once).unwrap_err();
    assert_eq!(e.name(), "outcome_unknown", "{e}");
    assert!(relay.holding(Duration::from_secs(10)), "the client's connection never reached the relay");
    assert_eq!(relay.release(), 1); // that connection gets in now
    // answered on it; a connection made anew would be held for good (timeout)
    let r = c.request("alpha", "sys.ping", Value::Nil, CallOptions { timeout: Some(30.0), ..CallOptions::default() });
    assert_eq!(r.map(|r| r.body).map_err(|e| e.to_string()), Ok(Value::from("pong")));
}
