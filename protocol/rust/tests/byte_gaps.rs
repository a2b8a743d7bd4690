//! Terminal output a subscriber never got, with no seq to say so (PROTOCOL.md section 12, "A
//! gap in the bytes"): its queue dropped the tail of a terminal actor's life, and the
//! successor's first offset skips ahead. The tracker puts a `ByteGap` before that message; the
//! subscription fills it from the terminal's scrollback (`term.scrollback`, a page at a time),
//! and what the scrollback no longer holds, or could not give, comes as `BytesLost`, never as
//! silence. The actor of the subscription tests is a fake in this process: a real XPUB, and a
//! ROUTER that answers each request as the test says.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use moorage_client::envelope::{decode_request, encode_error, encode_reply, encode_stream};
use moorage_client::streams::{ByteGap, GapFill, StreamTracker, FILL_PAGE};
use moorage_client::{args, Client, Options, StreamEvent, StreamMessage, SubscribeOptions, Value, WireError};

const OLD: &str = "aaaaaaaaaaaaaaaa";
const NEW: &str = "bbbbbbbbbbbbbbbb";
const TOPIC: &str = "term.out.s1";
/// Long enough for any wait of these tests on a loaded machine; none of them waits it out.
const PATIENCE: Duration = Duration::from_secs(20);

fn out(seq: u64, offset: u64, data: &[u8], epoch: &str) -> StreamMessage {
    StreamMessage { topic: TOPIC.into(), seq, epoch: epoch.into(), body: args([("offset", Value::from(offset))]), attachments: vec![data.to_vec()], welcome: false }
}

fn msg(seq: u64, offset: u64, data: &[u8], epoch: &str) -> StreamEvent {
    StreamEvent::Message(out(seq, offset, data, epoch))
}

/// A message a fill delivers: the gap's epoch and seq, its bytes marked replayed.
fn filled(seq: u64, offset: u64, data: &[u8], epoch: &str) -> StreamEvent {
    StreamEvent::Message(StreamMessage {
        body: args([("offset", Value::from(offset)), ("replay", Value::from(true))]), ..out(seq, offset, data, epoch)
    })
}

fn lost(from: u64, to: u64) -> StreamEvent {
    StreamEvent::BytesLost { topic: TOPIC.into(), from_offset: from, to_offset: to }
}

fn gap(from: u64, to: u64, epoch: &str, seq: u64) -> ByteGap {
    ByteGap { topic: TOPIC.into(), from_offset: from, to_offset: to, epoch: epoch.into(), seq }
}

fn scrollback_args(from: u64, max_bytes: u64) -> Value {
    args([("session", Value::from("s1")), ("from_offset", Value::from(from)), ("max_bytes", Value::from(max_bytes))])
}

/// A `term.scrollback` answer of the bytes `data` from `from`, with its `lost` if any.
fn page(from: u64, data: &[u8], lost: Option<(u64, u64)>) -> (Value, Vec<Vec<u8>>) {
    let mut pairs = vec![
        ("session", Value::from("s1")), ("from", Value::from(from)), ("to", Value::from(from + data.len() as u64)),
        ("first", Value::from(from)), ("end", Value::from(99)),
    ];
    if let Some((a, b)) = lost {
        pairs.push(("lost", Value::Array(vec![Value::from(a), Value::from(b)])));
    }
    (args(pairs), vec![data.to_vec()])
}

// --- the tracker and the fill, pure ---------------------------------------------------------

#[test]
fn bytes_skipped_across_a_reset_come_after_a_byte_gap_and_a_new_shell_is_none() {
    let mut t = StreamTracker::new(None, &[]);
    assert_eq!(t.on_message(out(1, 0, b"abc", OLD)), (vec![msg(1, 0, b"abc", OLD)], None));
    // the old life's tail (offsets 3..9) was dropped before it died: no seq says so
    let reset = StreamEvent::Reset { topic: TOPIC.into(), old_epoch: OLD.into(), new_epoch: NEW.into() };
    assert_eq!(t.on_message(out(1, 10, b"xyz", NEW)).0, vec![reset, StreamEvent::ByteGap(gap(3, 10, NEW, 1)), msg(1, 10, b"xyz", NEW)]);
    assert_eq!(t.byte_gaps, 1);
    // a recreated session's shell starts at a multiple of 2^40: a new stream, not a gap
    assert_eq!(t.on_message(out(2, 1 << 40, b"new", NEW)).0, vec![msg(2, 1 << 40, b"new", NEW)]);
    // bytes republished after a gap are still dropped by offset
    assert_eq!(t.on_message(out(3, (1 << 40) + 1, b"ew!", NEW)).0, vec![msg(3, (1 << 40) + 3, b"!", NEW)]);
    assert_eq!(t.byte_gaps, 1);
}

#[test]
fn a_gap_is_filled_from_the_scrollback_and_what_it_no_longer_holds_is_lost() {
    let mut fill = GapFill::new(gap(3, 10, NEW, 1));
    assert_eq!(fill.ask(), Some(scrollback_args(3, 7)));
    let (answer, attachments) = page(5, b"fghij", Some((3, 5)));
    fill.take(&answer, &attachments);
    assert_eq!(fill.ask(), None);
    assert_eq!(fill.events, vec![lost(3, 5), filled(1, 5, b"fghij", NEW)]);
}

#[test]
fn a_gap_filled_in_pages_and_a_failed_or_malformed_answer_reports_the_rest_lost() {
    let mut fill = GapFill::new(gap(0, 3 * FILL_PAGE, OLD, 7));
    let (answer, attachments) = page(0, &vec![b'a'; FILL_PAGE as usize], None);
    fill.take(&answer, &attachments);
    assert_eq!(fill.ask(), Some(scrollback_args(FILL_PAGE, FILL_PAGE)));
    // says 5 bytes, carries 3
    fill.take(&args([("from", Value::from(FILL_PAGE)), ("to", Value::from(FILL_PAGE + 5))]), &[b"abc".to_vec()]);
    assert_eq!(fill.ask(), None);
    assert_eq!(fill.events[1], lost(FILL_PAGE, 3 * FILL_PAGE));
    for (why, answer, attachments) in [
        ("no attachment", page(4, b"ef", None).0, vec![]),
        ("from before what was asked", page(3, b"def", None).0, vec![b"def".to_vec()]),
        ("to before from", args([("from", Value::from(5)), ("to", Value::from(4))]), vec![vec![]]),
        ("from not an integer", args([("from", Value::from("4")), ("to", Value::from(6))]), vec![b"ef".to_vec()]),
        ("not a map", Value::from(7), vec![b"ef".to_vec()]),
    ] {
        let mut bad = GapFill::new(gap(4, 6, OLD, 2));
        bad.take(&answer, &attachments);
        assert_eq!((bad.ask(), bad.events), (None, vec![lost(4, 6)]), "{why}");
    }
    let mut failed = GapFill::new(gap(4, 6, OLD, 2));
    failed.failed();
    assert_eq!((failed.ask(), failed.events), (None, vec![lost(4, 6)]));
    // a session whose end is before the gap's answers no bytes: lost, not asked for ever
    let mut short = GapFill::new(gap(4, 6, OLD, 2));
    let (answer, attachments) = page(4, b"", None);
    short.take(&answer, &attachments);
    assert_eq!((short.ask(), short.events), (None, vec![lost(4, 6)]));
}

// --- a subscription over real sockets ---------------------------------------------------------

/// A directory of this test's own (short: an ipc path must fit in 107 bytes), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mrg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The reply frames (after the routing id) to a request of `id` with these args.
type Answerer = Box<dyn FnMut(u64, &Value) -> Vec<Vec<u8>> + Send>;

/// The terminal actor `alpha`: its publisher, and its ROUTER in a thread of its own answering
/// every request with what `answer` gives; each request's op and args are kept. Dropped, the
/// ROUTER stops.
struct Fake {
    publisher: zmq::Socket,
    stop: Arc<AtomicBool>,
    asked: Arc<Mutex<Vec<(String, Value)>>>,
    router: Option<JoinHandle<()>>,
    _ctx: zmq::Context,
}

impl Fake {
    fn start(dir: &Path, mut answer: Answerer) -> Fake {
        let (ctx, publisher, router) = common::alpha_sockets(dir, PATIENCE);
        let stop = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (stopped, requests) = (stop.clone(), asked.clone());
        let router = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if router.poll(zmq::POLLIN, 50).unwrap() == 0 {
                    continue;
                }
                let mut frames = router.recv_multipart(0).unwrap();
                let rid = frames.remove(0);
                let Ok(req) = decode_request(&frames) else { continue };
                requests.lock().unwrap().push((req.op.clone(), req.args.clone()));
                let mut out = vec![rid];
                out.extend(answer(req.id, &req.args));
                router.send_multipart(out, 0).unwrap();
            }
        });
        Fake { publisher, stop, asked, router: Some(router), _ctx: ctx }
    }

    fn publish(&self, m: &StreamMessage) {
        self.publisher.send_multipart(encode_stream(&m.topic, m.seq, &m.epoch, &m.body, &m.attachments), 0).unwrap();
    }

    fn asked(&self) -> Vec<(String, Value)> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(router) = self.router.take() {
            let _ = router.join();
        }
    }
}

/// Answers each `term.scrollback` with the next of `pages`, any request past them with
/// `not_found`.
fn pages(pages: Vec<(Value, Vec<Vec<u8>>)>) -> Answerer {
    let mut pages = pages.into_iter();
    Box::new(move |id, _| match pages.next() {
        Some((body, attachments)) => encode_reply(Some(id), NEW, &body, &attachments),
        None => encode_error(Some(id), NEW, &WireError::of("not_found", "no session s1")),
    })
}

/// A subscription to `term.out.s1` that got "abc" (offsets 0..3) of one life, then "xyz" at
/// offset 10 as the next life's first message (3..10 dropped before the first life died):
/// what it delivers up to that message, and the requests the actor got meanwhile.
fn subscribed_across_a_gap(name: &str, answer: Answerer) -> (Vec<StreamEvent>, Vec<(String, Value)>) {
    let dir = Scratch::new(name);
    let fake = Fake::start(&dir.0, answer);
    let mut c = Client::new(Options { runtime_dir: Some(dir.0.clone()), learn_ops: false, timeout: 5.0, ..Options::default() }).unwrap();
    let mut sub = c.subscribe("alpha", &[TOPIC], SubscribeOptions::default()).unwrap();
    assert_eq!(fake.publisher.recv_bytes(0).expect("no subscription came"), b"\x01term.out.s1");
    fake.publish(&out(1, 0, b"abc", OLD));
    fake.publish(&out(1, 10, b"xyz", NEW));
    let mut got = Vec::new();
    while !matches!(got.last(), Some(StreamEvent::Message(m)) if m.epoch == NEW && m.body == out(1, 10, b"", NEW).body) {
        match sub.next(Some(PATIENCE)).unwrap() {
            Some(ev) => got.push(ev),
            None => panic!("nothing came for the second life's message; so far {got:?}"),
        }
    }
    assert_eq!(sub.tracker.byte_gaps, 1);
    (got, fake.asked())
}

fn reset() -> StreamEvent {
    StreamEvent::Reset { topic: TOPIC.into(), old_epoch: OLD.into(), new_epoch: NEW.into() }
}

#[test]
fn a_subscription_fills_a_gap_from_the_scrollback_and_reports_what_it_no_longer_holds() {
    let (got, asked) = subscribed_across_a_gap("filled", pages(vec![page(5, b"fghij", Some((3, 5)))]));
    assert_eq!(got, vec![msg(1, 0, b"abc", OLD), reset(), lost(3, 5), filled(1, 5, b"fghij", NEW), msg(1, 10, b"xyz", NEW)]);
    assert_eq!(asked, vec![("term.scrollback".to_string(), scrollback_args(3, 7))]);
}

#[test]
fn a_subscription_asks_the_scrollback_page_after_page_until_the_gap_is_whole() {
    let (got, asked) = subscribed_across_a_gap("paged", pages(vec![page(3, b"def", None), page(6, b"ghij", None)]));
    assert_eq!(got, vec![msg(1, 0, b"abc", OLD), reset(), filled(1, 3, b"def", NEW), filled(1, 6, b"ghij", NEW), msg(1, 10, b"xyz", NEW)]);
    let op = |from, max| ("term.scrollback".to_string(), scrollback_args(from, max));
    assert_eq!(asked, vec![op(3, 7), op(6, 4)]);
}

#[test]
fn a_failed_scrollback_reports_the_whole_gap_lost_then_the_message() {
    let (got, asked) = subscribed_across_a_gap("failed", pages(vec![]));
    assert_eq!(got, vec![msg(1, 0, b"abc", OLD), reset(), lost(3, 10), msg(1, 10, b"xyz", NEW)]);
    assert_eq!(asked, vec![("term.scrollback".to_string(), scrollback_args(3, 7))]);
}
