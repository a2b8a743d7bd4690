//! However a subscription's replay is answered, its topic goes on (PROTOCOL.md section 12,
//! step 5): an answer of the wrong shape, or pages that do not move the topic on, are a failed
//! replay. The gap is reported lost, the held message delivered, and what is published next is
//! delivered as it comes; the replay is never asked again without end, and no message is
//! delivered without the attachments it says it has. The actor is a fake in this process: a
//! real XPUB and a ROUTER that answers `replay` as each test says.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use moorage_client::envelope::{decode_request, encode_reply, encode_stream};
use moorage_client::streams::{NeedReplay, StreamTracker};
use moorage_client::{args, Client, Options, StreamEvent, StreamMessage, SubscribeOptions, Value};

const EPOCH: &str = "aaaaaaaaaaaaaaaa";
/// Long enough for any wait of these tests on a loaded machine; none of them waits it out.
const PATIENCE: Duration = Duration::from_secs(20);

/// A directory of this test's own (short: an ipc path must fit in 107 bytes).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mrr-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn message(seq: u64) -> StreamMessage {
    StreamMessage { topic: "t".into(), seq, epoch: EPOCH.into(), body: args([("n", Value::from(seq))]), attachments: vec![], welcome: false }
}

fn loss(first: u64, last: u64) -> StreamEvent {
    StreamEvent::Loss { topic: "t".into(), first, last, epoch: EPOCH.into() }
}

/// A `replay` answer: `messages` as `[seq, {"n": seq}, n_attachments]`, and `lost` and `more`.
fn answer(messages: &[(u64, u64)], lost: Option<(u64, u64)>, more: bool) -> Value {
    let messages = messages.iter().map(|&(seq, n)| Value::Array(vec![Value::from(seq), args([("n", Value::from(seq))]), Value::from(n)]));
    let lost = lost.map_or(Value::Nil, |(a, b)| Value::Array(vec![Value::from(a), Value::from(b)]));
    args([
        ("epoch", Value::from(EPOCH)), ("first_seq", Value::from(1)), ("last_seq", Value::from(3)),
        ("messages", Value::Array(messages.collect())), ("lost", lost), ("more", Value::from(more)),
    ])
}

type Answer = (Value, Vec<Vec<u8>>);

/// The actor `alpha`: its publisher, and its ROUTER in a thread of its own answering the first
/// `most` replay requests with what `answer` gives (those past it are left unanswered, so a
/// client that asks without end still ends, at its call's deadline).
struct Fake {
    publisher: zmq::Socket,
    stop: Arc<AtomicBool>,
    router: JoinHandle<Vec<u64>>,
    _ctx: zmq::Context,
}

impl Fake {
    fn start(dir: &Path, most: usize, answer: impl Fn() -> Answer + Send + 'static) -> Fake {
        let (ctx, publisher, router) = common::alpha_sockets(dir, PATIENCE);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let router = thread::spawn(move || {
            let mut asked = Vec::new(); // the from_seq of each replay request
            while !stopped.load(Ordering::Relaxed) {
                if router.poll(zmq::POLLIN, 50).unwrap() == 0 {
                    continue;
                }
                let mut frames = router.recv_multipart(0).unwrap();
                let rid = frames.remove(0);
                let req = decode_request(&frames).unwrap();
                assert_eq!(req.op, "replay");
                asked.push(moorage_client::codec::get(&req.args, "from_seq").and_then(Value::as_u64).unwrap());
                if asked.len() <= most {
                    let (body, attachments) = answer();
                    let mut out = vec![rid];
                    out.extend(encode_reply(Some(req.id), EPOCH, &body, &attachments));
                    router.send_multipart(out, 0).unwrap();
                }
            }
            asked
        });
        Fake { publisher, stop, router, _ctx: ctx }
    }

    fn publish(&self, seq: u64) {
        let m = message(seq);
        self.publisher.send_multipart(encode_stream("t", seq, EPOCH, &m.body, &[]), 0).unwrap();
    }

    /// Stops the ROUTER: the `from_seq` of every replay request it got.
    fn replays(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.router.join().unwrap()
    }
}

/// A subscription to `t` that got 1, then 3 (2 never was published: a gap), whose every
/// replay is answered `answer`: what it delivers up to the next message published, 4, and
/// the replays it asked for.
fn answered(name: &str, answer: impl Fn() -> Answer + Send + 'static) -> (Vec<StreamEvent>, Vec<u64>) {
    let dir = scratch(name);
    let fake = Fake::start(&dir, 3, answer);
    let mut c = Client::new(Options { runtime_dir: Some(dir.clone()), learn_ops: false, timeout: 5.0, ..Options::default() }).unwrap();
    let mut sub = c.subscribe("alpha", &["t"], SubscribeOptions::default()).unwrap();
    assert_eq!(fake.publisher.recv_bytes(0).expect("no subscription came"), b"\x01t");
    let mut got = Vec::new();
    for seq in [1, 3, 4] {
        fake.publish(seq);
        while !matches!(got.last(), Some(StreamEvent::Message(m)) if m.seq == seq) {
            match sub.next(Some(PATIENCE)).unwrap() {
                Some(ev) => got.push(ev),
                None => panic!("nothing came for message {seq}; so far {got:?}"),
            }
        }
    }
    let replays = fake.replays();
    std::fs::remove_dir_all(&dir).unwrap();
    (got, replays)
}

/// The gap reported lost, the held message delivered, and the next one as it came.
fn goes_on() -> Vec<StreamEvent> {
    vec![StreamEvent::Message(message(1)), loss(2, 2), StreamEvent::Message(message(3)), StreamEvent::Message(message(4))]
}

#[test]
fn a_page_cut_with_nothing_in_it_is_a_failed_replay() {
    let (got, replays) = answered("cut", || (answer(&[], None, true), vec![]));
    assert_eq!((got, replays), (goes_on(), vec![2]));
}

#[test]
fn answers_that_leave_the_gap_where_it_was_are_a_failed_replay() {
    // One such answer is asked again (the held message may have been published after it);
    // the second ends the replay.
    let (got, replays) = answered("stalled", || (answer(&[], None, false), vec![]));
    assert_eq!((got, replays), (goes_on(), vec![2, 2]));
}

#[test]
fn a_replay_answer_of_the_wrong_shape_is_a_failed_replay() {
    let cases: [(&str, Answer); 3] = [
        ("an attachment claimed that did not come", (answer(&[(2, 1)], None, false), vec![])),
        ("two attachments claimed, one came", (answer(&[(2, 1), (3, 1)], None, false), vec![b"x".to_vec()])),
        ("lost backwards", (answer(&[], Some((3, 2)), false), vec![])),
    ];
    let want: Vec<_> = cases.iter().map(|(case, _)| (*case, (goes_on(), vec![2]))).collect();
    let got: Vec<_> = cases.into_iter().enumerate()
        .map(|(i, (case, reply))| (case, answered(&format!("shape{i}"), move || reply.clone())))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_caller_that_gives_up_on_a_replay_gets_every_held_gap_as_lost() {
    let mut t = StreamTracker::new(None, &[String::new()]);
    t.on_message(message(1));
    assert_eq!(t.catch_up(), vec![NeedReplay { topic: "t".into(), from_seq: 2 }]);
    for seq in [5, 6, 9] {
        // read while the catch-up's replay was out (7 and 8 dropped)
        assert_eq!(t.on_message(message(seq)), (vec![], None));
    }
    let m = |seq| StreamEvent::Message(message(seq));
    assert_eq!(t.on_replay_failed("t"), vec![loss(2, 4), m(5), m(6), loss(7, 8), m(9)]);
    assert_eq!(t.on_message(message(10)), (vec![m(10)], None));
}

#[test]
fn a_gap_after_a_failed_replay_gets_its_one_honest_empty_answer_again() {
    // An answer with nothing new is honest once (the held message that shows the gap was
    // published after it): it is asked again. Its mark goes with the replay that failed after
    // it, so the next gap's first empty answer is not taken for a second one.
    let mut t = StreamTracker::new(None, &[String::new()]);
    t.on_message(message(1));
    t.catch_up();
    t.on_message(message(4));
    let (_, need) = t.on_replay("t", &answer(&[], None, false), &[]);
    assert_eq!(need, Some(NeedReplay { topic: "t".into(), from_seq: 2 }));
    assert_eq!(t.on_replay_failed("t"), vec![loss(2, 3), StreamEvent::Message(message(4))]);
    t.catch_up();
    t.on_message(message(7));
    let (events, need) = t.on_replay("t", &answer(&[], None, false), &[]);
    assert_eq!(need, Some(NeedReplay { topic: "t".into(), from_seq: 5 }), "{events:?}");
}

#[test]
fn a_replay_nobody_answers_takes_what_is_left_of_next_not_a_whole_call() {
    // The client's calls may take a minute; a `next()` of a second that meets a gap gives the
    // replay what is left of its second (at least one attempt), then reports the gap lost.
    let dir = scratch("unanswered");
    let fake = Fake::start(&dir, 0, || unreachable!("no replay is answered"));
    let mut c = Client::new(Options {
        runtime_dir: Some(dir.clone()), learn_ops: false, timeout: 60.0, attempt_timeout: 0.5,
        ..Options::default()
    }).unwrap();
    let mut sub = c.subscribe("alpha", &["t"], SubscribeOptions::default()).unwrap();
    assert_eq!(fake.publisher.recv_bytes(0).expect("no subscription came"), b"\x01t");
    fake.publish(1);
    assert_eq!(sub.next(Some(PATIENCE)).unwrap(), Some(StreamEvent::Message(message(1))));
    fake.publish(3);
    let asked = std::time::Instant::now();
    let mut got = Vec::new();
    while got.len() < 2 {
        match sub.next(Some(Duration::from_secs(1))).unwrap() {
            Some(ev) => got.push(ev),
            None => assert!(asked.elapsed() < PATIENCE, "nothing came for message 3"),
        }
    }
    // (one page's wait, not the call's 60 s: PATIENCE is a third of it)
    assert!(asked.elapsed() < PATIENCE, "{:?}", asked.elapsed());
    assert_eq!(got, vec![loss(2, 2), StreamEvent::Message(message(3))]);
    let replays = fake.replays(); // (an attempt or two, within the second: each asks for 2)
    assert!(!replays.is_empty() && replays.iter().all(|&seq| seq == 2), "{replays:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
