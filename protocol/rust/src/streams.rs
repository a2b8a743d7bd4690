//! Stream bookkeeping (PROTOCOL.md section 12), pure: order, gaps, welcomes, replay, loss,
//! resets, and the byte-offset rule of `term.out.*`. A port of the Python client's tracker,
//! held to the same scenarios (protocol/vectors/client.json).
//!
//! A `term.out.*` message whose offset is past the next byte not yet delivered (bytes no seq
//! told missing: the tail of a publisher's life, dropped before it died) comes after a
//! `ByteGap`, which a subscription fills from the terminal's scrollback (`GapFill`: the bytes
//! as messages, what is no longer held as `BytesLost`).

use std::collections::{HashMap, HashSet};

use rmpv::Value;

use crate::codec::{get, map_of};
use crate::envelope::StreamMessage;
use crate::limits::MAX_ID;

/// Topics whose messages carry `{offset}` and bytes as attachment 0: de-duplicated by offset.
pub const OFFSET_TOPIC_PREFIX: &str = "term.out.";
/// A recreated session's output starts at a multiple of this (PROTOCOL.md section 12): a jump
/// of the offset there is a new shell, not a gap.
pub const NEW_SHELL_OFFSET: u64 = 1 << 40;
/// What one `term.scrollback` asked by a `GapFill` returns at most (the op's own default).
pub const FILL_PAGE: u64 = 1 << 20;

/// A `replay` answer as section 12 has it: a map whose `epoch` is a string, `lost` nil or
/// `[first, last]` with `first <= last`, `messages` `[seq, body, n_attachments]` triples that
/// claim no more attachments than came, and `more` a bool, every integer in [0, 2^53). Any
/// other is no answer to go on (a publisher's bug, or a hostile one): the replay failed, and
/// no message is ever delivered without the bytes it says it has.
fn answer_ok(answer: &Value, n_attachments: usize) -> bool {
    let int = |v: &Value| v.as_u64().is_some_and(|n| n <= MAX_ID);
    let absent_or = |key: &str, ok: &dyn Fn(&Value) -> bool| match get(answer, key) {
        None | Some(Value::Nil) => true,
        Some(v) => ok(v),
    };
    let lost = |v: &Value| match v.as_array().map(Vec::as_slice) {
        Some([a, b]) => int(a) && int(b) && a.as_u64() <= b.as_u64(),
        _ => false,
    };
    let message = |m: &Value| matches!(m.as_array().map(Vec::as_slice), Some([seq, _, n]) if int(seq) && int(n));
    let messages = |v: &Value| {
        v.as_array().is_some_and(|ms| {
            ms.iter().all(message)
                && ms.iter().map(|m| m[2].as_u64().unwrap_or(0)).fold(0u64, u64::saturating_add) <= n_attachments as u64
        })
    };
    answer.is_map()
        && absent_or("epoch", &|v| v.is_str())
        && absent_or("lost", &lost)
        && absent_or("messages", &messages)
        && absent_or("more", &|v| v.is_bool())
}

#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Message(StreamMessage),
    /// Messages `first..=last` were published but can no longer be had.
    Loss { topic: String, first: u64, last: u64, epoch: String },
    /// The publisher restarted: the topic continues in `new_epoch` from seq 1.
    Reset { topic: String, old_epoch: String, new_epoch: String },
    /// Bytes `[from_offset, to_offset)` of the terminal output `topic` were never delivered and
    /// can no longer be had (the terminal's scrollback no longer held them when asked, or
    /// could not be asked).
    BytesLost { topic: String, from_offset: u64, to_offset: u64 },
    /// The tracker's word that the message after it skipped bytes: a `Subscription` replaces
    /// it with what a `GapFill` gets, and never returns it from `next`.
    ByteGap(ByteGap),
}

/// Bytes `[from_offset, to_offset)` of `topic` were skipped by the message that follows, of
/// `epoch` and `seq` (the filled bytes are delivered as that epoch's and seq's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteGap {
    pub topic: String,
    pub from_offset: u64,
    pub to_offset: u64,
    pub epoch: String,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedReplay {
    pub topic: String,
    pub from_seq: u64,
}

#[derive(Debug, Default)]
struct TopicState {
    epoch: Option<String>,
    last: u64,
    superseded: HashSet<String>,
    successor: Option<String>,
    /// The last replay page moved `last` on by nothing (the publisher had nothing new, or a
    /// held message came after it): one more such page for this gap is a failed replay.
    stalled: bool,
}

type Step = (Vec<StreamEvent>, Option<NeedReplay>);

#[derive(Debug, Default)]
pub struct StreamTracker {
    pub from_seq: Option<u64>,
    pub prefixes: HashSet<String>,
    pub live: HashSet<String>,
    topics: HashMap<String, TopicState>,
    replaying: HashSet<String>,
    held: HashMap<String, Vec<StreamMessage>>,
    next_offset: HashMap<String, u64>,
    /// Replays asked for (gaps, welcomes past what was seen).
    pub replays_asked: u64,
    /// `term.out.*`: `ByteGap`s given (bytes skipped that no seq told).
    pub byte_gaps: u64,
}

fn state(epoch: &str, last: u64) -> TopicState {
    TopicState { epoch: Some(epoch.to_string()), last, ..TopicState::default() }
}

impl StreamTracker {
    pub fn new(from_seq: Option<u64>, prefixes: &[String]) -> StreamTracker {
        StreamTracker { from_seq, prefixes: prefixes.iter().cloned().collect(), ..StreamTracker::default() }
    }

    pub fn on_message(&mut self, msg: StreamMessage) -> Step {
        let (events, need) = self.message(msg);
        if need.is_some() {
            self.replays_asked += 1;
        }
        (self.dedup(events), need)
    }

    /// Feed the `replay` op's answer: events, and maybe the next page to ask for.
    pub fn on_replay(&mut self, topic: &str, answer: &Value, attachments: &[Vec<u8>]) -> Step {
        let (events, need) = self.replay(topic, answer, attachments);
        if need.is_some() {
            self.replays_asked += 1;
        }
        (self.dedup(events), need)
    }

    /// The replay call failed (its publisher gone, say): the gap is a loss, and the held
    /// messages go on; returns events and maybe the replay a later gap among them needs.
    pub fn replay_failed(&mut self, topic: &str) -> Step {
        let (events, need) = self.failed(topic);
        if need.is_some() {
            self.replays_asked += 1;
        }
        (self.dedup(events), need)
    }

    /// As `replay_failed`, for a caller that asks no further replay (it is giving up, or
    /// cannot): a later gap among the held messages is a loss too, so the topic is never left
    /// waiting for a replay nobody sends.
    pub fn on_replay_failed(&mut self, topic: &str) -> Vec<StreamEvent> {
        let (mut events, mut need) = self.failed(topic);
        while let Some(n) = need {
            let (more, next) = self.failed(&n.topic);
            events.extend(more);
            need = next;
        }
        self.dedup(events)
    }

    pub fn is_live(&self, topic: &str) -> bool {
        self.live.iter().any(|p| topic.starts_with(p.as_str()))
    }

    fn message(&mut self, msg: StreamMessage) -> Step {
        if msg.welcome {
            let topic = msg.topic.clone();
            let out = self.welcome(msg);
            if self.prefixes.contains(&topic) {
                self.live.insert(topic);
            }
            return out;
        }
        if self.replaying.contains(&msg.topic) {
            self.held.entry(msg.topic.clone()).or_default().push(msg);
            return (vec![], None);
        }
        if !self.topics.contains_key(&msg.topic) {
            let start = if self.is_live(&msg.topic) { Some(1) } else { self.from_seq };
            if let Some(start) = start {
                if msg.seq > start {
                    self.topics.insert(msg.topic.clone(), state(&msg.epoch, start.saturating_sub(1)));
                    return self.ask(msg);
                }
            }
            self.topics.insert(msg.topic.clone(), state(&msg.epoch, msg.seq));
            return (vec![StreamEvent::Message(msg)], None);
        }
        let mut out = vec![];
        if !self.adopt_epoch(&msg, &mut out) {
            return (vec![], None);
        }
        let st = self.topics.get_mut(&msg.topic).unwrap();
        if msg.seq <= st.last {
            return (out, None);
        }
        if msg.seq == st.last + 1 {
            st.last = msg.seq;
            out.push(StreamEvent::Message(msg));
            return (out, None);
        }
        if st.successor.is_some() {
            out.push(StreamEvent::Loss { topic: msg.topic.clone(), first: st.last + 1, last: msg.seq - 1, epoch: msg.epoch.clone() });
            st.last = msg.seq;
            out.push(StreamEvent::Message(msg));
            return (out, None);
        }
        let (events, need) = self.ask(msg);
        out.extend(events);
        (out, need)
    }

    fn welcome(&mut self, msg: StreamMessage) -> Step {
        if self.replaying.contains(&msg.topic) {
            return (vec![], None);
        }
        if !self.topics.contains_key(&msg.topic) {
            let start = if self.is_live(&msg.topic) {
                1
            } else if let Some(f) = self.from_seq {
                f
            } else {
                self.topics.insert(msg.topic.clone(), state(&msg.epoch, msg.seq)); // "from now"
                return (vec![], None);
            };
            self.topics.insert(msg.topic.clone(), state(&msg.epoch, start.saturating_sub(1)));
            if msg.seq < start {
                return (vec![], None);
            }
        }
        let mut out = vec![];
        if !self.adopt_epoch(&msg, &mut out) {
            return (vec![], None);
        }
        let last = self.topics[&msg.topic].last;
        if msg.seq <= last {
            return (out, None);
        }
        self.replaying.insert(msg.topic.clone());
        self.held.insert(msg.topic.clone(), vec![]);
        (out, Some(NeedReplay { topic: msg.topic, from_seq: last + 1 }))
    }

    fn adopt_epoch(&mut self, msg: &StreamMessage, out: &mut Vec<StreamEvent>) -> bool {
        let st = self.topics.get_mut(&msg.topic).unwrap();
        if st.superseded.contains(&msg.epoch) {
            return false;
        }
        match &st.epoch {
            None => st.epoch = Some(msg.epoch.clone()),
            Some(e) if *e != msg.epoch => {
                out.push(StreamEvent::Reset { topic: msg.topic.clone(), old_epoch: e.clone(), new_epoch: msg.epoch.clone() });
                st.superseded.insert(e.clone());
                st.epoch = Some(msg.epoch.clone());
                st.last = 0;
                st.successor = None;
            }
            _ => {}
        }
        true
    }

    fn ask(&mut self, msg: StreamMessage) -> Step {
        let from = self.topics[&msg.topic].last + 1;
        self.replaying.insert(msg.topic.clone());
        let topic = msg.topic.clone();
        self.held.insert(topic.clone(), vec![msg]);
        (vec![], Some(NeedReplay { topic, from_seq: from }))
    }

    /// An answer this tracker cannot follow (not of the op's shape, or a page that does not
    /// move the topic on) is a failed replay: the gap is reported lost.
    fn replay(&mut self, topic: &str, answer: &Value, attachments: &[Vec<u8>]) -> Step {
        if !answer_ok(answer, attachments.len()) {
            return self.failed(topic);
        }
        let mut out = vec![];
        let st = self.topics.get_mut(topic).expect("a replay of a tracked topic");
        let epoch = get(answer, "epoch").and_then(|v| v.as_str()).map(str::to_string).or_else(|| st.epoch.clone()).unwrap_or_default();
        match &st.epoch {
            None => st.epoch = Some(epoch.clone()),
            Some(e) if *e != epoch => {
                // The publisher restarted: what this epoch missed cannot be replayed any more,
                // but its messages still queued in our socket come first; the newer epoch
                // starts (with a Reset) at its first message or welcome.
                st.successor = Some(epoch);
                return self.failed(topic);
            }
            _ => {}
        }
        let before = st.last;
        if let Some([a, b]) = get(answer, "lost").and_then(|v| v.as_array()).map(Vec::as_slice) {
            let (a, b) = (a.as_u64().unwrap_or(0), b.as_u64().unwrap_or(0));
            if b > st.last {
                out.push(StreamEvent::Loss { topic: topic.to_string(), first: a.max(st.last + 1), last: b, epoch: epoch.clone() });
                st.last = b;
            }
        }
        let mut i = 0usize;
        for m in get(answer, "messages").and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or(&[]) {
            let parts = m.as_array().map(Vec::as_slice).unwrap_or(&[]);
            if parts.len() != 3 {
                continue;
            }
            let (seq, n) = (parts[0].as_u64().unwrap_or(0), parts[2].as_u64().unwrap_or(0) as usize);
            // (`answer_ok` saw every claimed attachment come: this slice is whole)
            let atts = attachments.get(i..i.saturating_add(n)).unwrap_or(&[]).to_vec();
            i = i.saturating_add(n);
            if seq == st.last + 1 {
                st.last = seq;
                out.push(StreamEvent::Message(StreamMessage {
                    topic: topic.to_string(), seq, epoch: epoch.clone(), body: parts[1].clone(), attachments: atts, welcome: false,
                }));
            }
        }
        let more = matches!(get(answer, "more"), Some(Value::Boolean(true)));
        if st.last == before && (more || st.stalled) {
            // A page cut with nothing in it, or a second answer in a row that leaves the gap
            // where it was: asking again would loop for as long as the publisher answers so.
            // (One answer with nothing new is honest when the held message that still shows
            // a gap was published after it: that one is asked again.)
            st.stalled = false;
            return self.failed(topic);
        }
        if more {
            st.stalled = false;
            return (out, Some(NeedReplay { topic: topic.to_string(), from_seq: st.last + 1 }));
        }
        st.stalled = st.last == before;
        self.replaying.remove(topic);
        let (events, need) = self.deliver_held(topic);
        if need.is_none() {
            self.topics.get_mut(topic).unwrap().stalled = false;
        }
        out.extend(events);
        (out, need)
    }

    /// The gap before the first held message is lost; the held ones go on, and maybe the
    /// replay a later gap among them needs.
    fn failed(&mut self, topic: &str) -> Step {
        self.replaying.remove(topic);
        let first = self.held.get(topic).and_then(|h| h.iter().min_by_key(|m| m.seq).map(|m| (m.seq, &m.epoch)));
        let st = self.topics.get_mut(topic).unwrap();
        st.stalled = false; // (a later gap's replay starts afresh)
        let mut out = vec![];
        if let Some((seq, epoch)) = first {
            if Some(epoch) == st.epoch.as_ref() && seq > st.last + 1 {
                out.push(StreamEvent::Loss { topic: topic.to_string(), first: st.last + 1, last: seq - 1, epoch: epoch.clone() });
                st.last = seq - 1;
            }
        }
        let (events, need) = self.deliver_held(topic);
        out.extend(events);
        (out, need)
    }

    /// The messages held during a replay, in seq order, as if they came now; one that shows
    /// a gap holds itself and the rest again, and returns the replay it needs.
    fn deliver_held(&mut self, topic: &str) -> Step {
        let mut held = self.held.remove(topic).unwrap_or_default();
        held.sort_by_key(|m| m.seq);
        let mut out = vec![];
        let mut rest = held.into_iter();
        while let Some(m) = rest.next() {
            let (events, need) = self.message(m);
            out.extend(events);
            if need.is_some() {
                self.held.entry(topic.to_string()).or_default().extend(rest);
                return (out, need);
            }
        }
        (out, None)
    }

    /// Replays that would reveal a lost tail (section 12, "Tail loss"): for every topic seen and
    /// not being replayed already, from the seq after the last delivered.
    pub fn catch_up(&mut self) -> Vec<NeedReplay> {
        let mut needs = vec![];
        for (topic, st) in &self.topics {
            if self.replaying.contains(topic) || st.epoch.is_none() || st.successor.is_some() {
                continue;
            }
            needs.push(NeedReplay { topic: topic.clone(), from_seq: st.last + 1 });
        }
        needs.sort_by(|a, b| a.topic.cmp(&b.topic));
        for n in &needs {
            self.replaying.insert(n.topic.clone());
            self.held.entry(n.topic.clone()).or_default();
        }
        self.replays_asked += needs.len() as u64;
        needs
    }

    /// `term.out.*`: drop bytes already delivered, trim a message straddling the next offset,
    /// put a `ByteGap` before one past it (PROTOCOL.md section 12, "Byte streams").
    fn dedup(&mut self, events: Vec<StreamEvent>) -> Vec<StreamEvent> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let m = match ev {
                StreamEvent::Message(m) if m.topic.starts_with(OFFSET_TOPIC_PREFIX) && !m.attachments.is_empty() => m,
                other => {
                    out.push(other);
                    continue;
                }
            };
            let off = match get(&m.body, "offset").and_then(|v| v.as_u64()) {
                Some(o) => o,
                None => {
                    out.push(StreamEvent::Message(m));
                    continue;
                }
            };
            let end = off.saturating_add(m.attachments[0].len() as u64);
            let expected = self.next_offset.get(&m.topic).copied();
            let mut m = m;
            if let Some(exp) = expected {
                if off > exp && off % NEW_SHELL_OFFSET != 0 {
                    self.byte_gaps += 1;
                    out.push(StreamEvent::ByteGap(ByteGap {
                        topic: m.topic.clone(), from_offset: exp, to_offset: off, epoch: m.epoch.clone(), seq: m.seq,
                    }));
                } else if off < exp {
                    if end <= exp {
                        continue;
                    }
                    let cut = (exp - off) as usize;
                    m.attachments[0] = m.attachments[0][cut..].to_vec();
                    if let Value::Map(pairs) = &mut m.body {
                        for (k, v) in pairs.iter_mut() {
                            if k.as_str() == Some("offset") {
                                *v = Value::from(exp);
                            }
                        }
                    }
                }
            }
            self.next_offset.insert(m.topic.clone(), end.max(expected.unwrap_or(0)));
            out.push(StreamEvent::Message(m));
        }
        out
    }
}

/// The bytes of a `ByteGap`, asked of the terminal (`term.scrollback`, a page at a time) by a
/// subscription, which does the I/O: `ask()` gives the next request's args (None: done),
/// `take()` its answer, `failed()` a request that failed. `events`: the bytes as `term.out`
/// messages of the gap's epoch and seq (`replay: true`, as a successor's republished ones),
/// and a `BytesLost` for what the scrollback no longer held or could not be had, in offset
/// order. Every `take` or `failed` moves the fill on, so it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct GapFill {
    pub gap: ByteGap,
    /// The first byte of the gap neither delivered nor reported lost yet.
    pub at: u64,
    pub events: Vec<StreamEvent>,
}

impl GapFill {
    pub fn new(gap: ByteGap) -> GapFill {
        GapFill { at: gap.from_offset, gap, events: vec![] }
    }

    /// The next `term.scrollback` args, or None once the whole gap is delivered or lost.
    pub fn ask(&self) -> Option<Value> {
        if self.at >= self.gap.to_offset {
            return None;
        }
        let session = self.gap.topic.strip_prefix(OFFSET_TOPIC_PREFIX).unwrap_or(&self.gap.topic);
        Some(map_of([
            ("session", Value::from(session)),
            ("from_offset", Value::from(self.at)),
            ("max_bytes", Value::from(FILL_PAGE.min(self.gap.to_offset - self.at))),
        ]))
    }

    /// A `term.scrollback` answer: what it no longer holds (`from` past what was asked) is
    /// lost, its bytes up to the gap's end delivered. One not of the op's shape, or that
    /// brings nothing, leaves the rest to be had from nowhere: lost.
    pub fn take(&mut self, answer: &Value, attachments: &[Vec<u8>]) {
        let at = self.at;
        let int = |k: &str| get(answer, k).and_then(Value::as_u64);
        let (frm, to) = match (int("from"), int("to"), attachments.first()) {
            (Some(f), Some(t), Some(a)) if at <= f && f <= t && a.len() as u64 == t - f => (f, t),
            _ => return self.failed(),
        };
        if frm > at {
            self.lost(frm.min(self.gap.to_offset));
        }
        if to > frm && frm < self.gap.to_offset {
            let n = (to.min(self.gap.to_offset) - frm) as usize;
            self.events.push(StreamEvent::Message(StreamMessage {
                topic: self.gap.topic.clone(), seq: self.gap.seq, epoch: self.gap.epoch.clone(),
                body: map_of([("offset", Value::from(frm)), ("replay", Value::from(true))]),
                attachments: vec![attachments[0][..n].to_vec()], welcome: false,
            }));
            self.at = frm + n as u64;
        } else if frm == at {
            self.failed(); // (nothing: the session's end is before the gap's)
        }
    }

    /// The ask failed (or was given up): the rest of the gap is lost.
    pub fn failed(&mut self) {
        self.lost(self.gap.to_offset);
    }

    fn lost(&mut self, upto: u64) {
        if upto > self.at {
            self.events.push(StreamEvent::BytesLost { topic: self.gap.topic.clone(), from_offset: self.at, to_offset: upto });
            self.at = upto;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode_stream, encode_stream};

    fn msg(topic: &str, seq: u64, body: Value, attachments: Vec<Vec<u8>>) -> StreamMessage {
        StreamMessage { topic: topic.into(), seq, epoch: "e".into(), body, attachments, welcome: false }
    }

    fn ask(topic: &str, from: u64) -> Option<NeedReplay> {
        Some(NeedReplay { topic: topic.into(), from_seq: from })
    }

    #[test]
    fn an_answer_that_is_not_a_replay_answer_is_a_failed_replay_and_the_topic_goes_on() {
        let (big, no) = (Value::from(MAX_ID + 1), Value::Array(vec![]));
        for answer in [
            map_of([("lost", no.clone())]),
            map_of([("lost", Value::Array(vec![Value::from(1), big.clone()]))]),
            map_of([("messages", Value::from(7))]),
            map_of([("messages", Value::Array(vec![Value::Array(vec![big.clone(), Value::Nil, Value::from(0)])]))]),
            map_of([("messages", Value::Array(vec![no.clone()]))]),
            map_of([("epoch", Value::from(1))]),
            map_of([("more", Value::from("yes"))]),
            Value::from(7),
        ] {
            let mut t = StreamTracker::new(Some(1), &["t".to_string()]);
            assert_eq!(t.on_message(msg("t", 5, Value::Nil, vec![])), (vec![], ask("t", 1)));
            let (events, need) = t.on_replay("t", &answer, &[]);
            let lost = StreamEvent::Loss { topic: "t".into(), first: 1, last: 4, epoch: "e".into() };
            assert_eq!((events, need), (vec![lost, StreamEvent::Message(msg("t", 5, Value::Nil, vec![]))], None), "{answer}");
            assert_eq!(t.on_message(msg("t", 6, Value::Nil, vec![])).0, vec![StreamEvent::Message(msg("t", 6, Value::Nil, vec![]))], "{answer}");
        }
    }

    #[test]
    fn a_failed_replay_returns_the_replay_a_later_held_gap_needs() {
        let mut t = StreamTracker::new(None, &[String::new()]);
        let m = |seq| StreamEvent::Message(msg("t", seq, Value::Nil, vec![]));
        t.on_message(msg("t", 1, Value::Nil, vec![]));
        assert_eq!(t.catch_up(), vec![NeedReplay { topic: "t".into(), from_seq: 2 }]);
        for seq in [5, 6, 9] {
            t.on_message(msg("t", seq, Value::Nil, vec![])); // (7 and 8 dropped)
        }
        let lost = StreamEvent::Loss { topic: "t".into(), first: 2, last: 4, epoch: "e".into() };
        assert_eq!(t.replay_failed("t"), (vec![lost, m(5), m(6)], ask("t", 7)));
        let page = map_of([("messages", Value::Array([7, 8].map(|s| Value::Array(vec![Value::from(s), Value::Nil, Value::from(0)])).to_vec()))]);
        assert_eq!(t.on_replay("t", &page, &[]), (vec![m(7), m(8), m(9)], None));
        assert_eq!(t.on_message(msg("t", 10, Value::Nil, vec![])), (vec![m(10)], None));
    }

    #[test]
    fn from_seq_0_is_from_the_start() {
        let mut t = StreamTracker::new(Some(0), &["t".to_string()]);
        assert_eq!(t.on_message(msg("t", 3, Value::Nil, vec![])), (vec![], ask("t", 1)));
    }

    #[test]
    fn a_stream_seq_past_2_53_is_refused() {
        assert!(decode_stream(&encode_stream("t", MAX_ID + 1, "e", &Value::Nil, &[])).is_err());
        assert_eq!(decode_stream(&encode_stream("t", MAX_ID, "e", &Value::Nil, &[])).unwrap().seq, MAX_ID);
    }

    #[test]
    fn an_offset_near_the_top_does_not_overflow() {
        let mut t = StreamTracker::new(None, &["term.out.".to_string()]);
        let m = msg("term.out.s", 1, map_of([("offset", Value::from(u64::MAX))]), vec![b"ab".to_vec()]);
        assert_eq!(t.on_message(m.clone()).0, vec![StreamEvent::Message(m)]);
    }
}
