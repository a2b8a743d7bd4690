//! Frames on the wire (PROTOCOL.md sections 3-5 and 15), pure: no sockets.
//!
//! ```text
//! request  [MOOR1] [header {id, sid, op, deadline_ms?, ep?}] [args]       [attachment]*
//! reply    [MOOR1] [header {id, ok, ep}]                [result | error]  [attachment]*
//! stream   [topic] [MOOR1] [header {seq, ep, welcome?}] [body]            [attachment]*
//! ```

use rmpv::Value;

use crate::codec::{self, get, map_of};
use crate::errors::{DecodeError, WireError};
use crate::limits;

pub const TAG: &[u8] = b"MOOR1";
pub const PROTO_VERSION: i64 = 1;
const NIL: &[u8] = &[0xc0];

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub sid: String,
    pub op: String,
    pub deadline_ms: Option<i64>,
    pub args: Value,
    pub attachments: Vec<Vec<u8>>,
    /// The header's `ep`: run only in this actor life (a resend of a call that may have run,
    /// section 10); None on a first attempt.
    pub epoch: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: Option<u64>,
    pub ok: bool,
    pub epoch: String,
    pub body: Value,
    pub attachments: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamMessage {
    pub topic: String,
    pub seq: u64,
    pub epoch: String,
    pub body: Value,
    pub attachments: Vec<Vec<u8>>,
    /// A welcome is no message of the stream (section 12).
    pub welcome: bool,
}

fn header(frame: &[u8]) -> Result<Value, DecodeError> {
    if frame.len() > limits::MAX_HEADER_SIZE {
        return Err(DecodeError::new("message_too_large", format!("header {} bytes", frame.len()), None));
    }
    let h = codec::decode(frame).map_err(|e| DecodeError::new("bad_request", format!("undecodable header: {e}"), None))?;
    if !h.is_map() {
        return Err(DecodeError::new("bad_request", "header is not a map", None));
    }
    Ok(h)
}

/// A body under the protocol's limits; an undecodable one is bad_request with `id`.
pub fn decode_body(frame: &[u8], max_len: usize, id: Option<u64>) -> Result<Value, DecodeError> {
    if frame.len() > max_len {
        return Err(DecodeError::new("message_too_large", format!("{} bytes > {}", frame.len(), max_len), id));
    }
    if frame == NIL {
        return Ok(Value::Nil);
    }
    codec::decode(frame).map_err(|e| DecodeError::new("bad_request", format!("undecodable msgpack: {e}"), id))
}

fn int(v: Option<&Value>) -> Option<&rmpv::Integer> {
    match v {
        Some(Value::Integer(i)) => Some(i),
        _ => None,
    }
}

pub fn encode_request(id: u64, sid: &str, op: &str, args: &[u8], deadline_ms: Option<i64>, attachments: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut h = vec![("id", Value::from(id)), ("sid", Value::from(sid)), ("op", Value::from(op))];
    if let Some(d) = deadline_ms {
        h.push(("deadline_ms", Value::from(d)));
    }
    let mut frames = vec![TAG.to_vec(), codec::encode(&map_of(h)), args.to_vec()];
    frames.extend(attachments.iter().cloned());
    frames
}

/// The same request (same id, deadline, body, attachments) to be run only by the actor life
/// `epoch`: what a client resends when the first attempt may have run there, so that a
/// successor, whose reply cache does not know the id, refuses it instead of running it a
/// second time (section 10). The header is packed again as the reference encoder packs it:
/// `ep` last, or in its place when it was there.
pub fn pin_request(frames: &[Vec<u8>], epoch: &str) -> Result<Vec<Vec<u8>>, DecodeError> {
    if frames.len() < 3 {
        return Err(DecodeError::new("bad_request", format!("expected >= 3 frames, got {}", frames.len()), None));
    }
    let Value::Map(mut pairs) = header(&frames[1])? else { unreachable!("header() returns a map") };
    match pairs.iter_mut().find(|(k, _)| k.as_str() == Some("ep")) {
        Some((_, v)) => *v = Value::from(epoch),
        None => pairs.push((Value::from("ep"), Value::from(epoch))),
    }
    let mut out = frames.to_vec();
    out[1] = codec::encode(&Value::Map(pairs));
    Ok(out)
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// An actor's checks in section 15's order; the error says which id its reply echoes.
pub fn decode_request(frames: &[Vec<u8>]) -> Result<Request, DecodeError> {
    if frames.len() < 3 {
        return Err(DecodeError::new("bad_request", format!("expected >= 3 frames, got {}", frames.len()), None));
    }
    if frames[0] != TAG {
        return Err(DecodeError::new("unsupported_version", "tag is not MOOR1", None));
    }
    let h = header(&frames[1])?;
    let id = match int(get(&h, "id")).and_then(|i| i.as_u64()) {
        Some(id) if id <= limits::MAX_ID => id,
        _ => return Err(DecodeError::new("bad_request", "id must be an integer in [0, 2^53)", None)),
    };
    let sid = match get(&h, "sid").and_then(|v| v.as_str()) {
        Some(s) if !s.is_empty() && chars(s) <= limits::MAX_SID_LEN => s.to_string(),
        _ => return Err(DecodeError::new("bad_request", "sid must be a non-empty string", Some(id))),
    };
    let op = match get(&h, "op").and_then(|v| v.as_str()) {
        Some(s) if !s.is_empty() && chars(s) <= limits::MAX_OP_LEN => s.to_string(),
        _ => return Err(DecodeError::new("bad_request", "op must be a non-empty string", Some(id))),
    };
    let deadline_ms = match get(&h, "deadline_ms") {
        None | Some(Value::Nil) => None,
        Some(Value::Integer(i)) => Some(i.as_i64().unwrap_or(i64::MAX)),
        Some(_) => return Err(DecodeError::new("bad_request", "deadline_ms must be an integer", Some(id))),
    };
    let epoch = match get(&h, "ep") {
        None | Some(Value::Nil) => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => return Err(DecodeError::new("bad_request", "ep must be a string", Some(id))),
        },
    };
    if frames.len() - 3 > limits::MAX_ATTACHMENTS {
        return Err(DecodeError::new("message_too_large", format!("{} attachments", frames.len() - 3), Some(id)));
    }
    let args = decode_body(&frames[2], limits::MAX_BODY_SIZE, Some(id))?;
    Ok(Request { id, sid, op, deadline_ms, args, attachments: frames[3..].to_vec(), epoch })
}

fn id_value(id: Option<u64>) -> Value {
    id.map_or(Value::Nil, Value::from)
}

pub fn encode_reply(id: Option<u64>, epoch: &str, result: &Value, attachments: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let h = map_of([("id", id_value(id)), ("ok", Value::from(true)), ("ep", Value::from(epoch))]);
    let mut frames = vec![TAG.to_vec(), codec::encode(&h), codec::encode(result)];
    frames.extend(attachments.iter().cloned());
    frames
}

pub fn encode_error(id: Option<u64>, epoch: &str, error: &WireError) -> Vec<Vec<u8>> {
    let h = map_of([("id", id_value(id)), ("ok", Value::from(false)), ("ep", Value::from(epoch))]);
    vec![TAG.to_vec(), codec::encode(&h), codec::encode(&error.to_wire())]
}

/// A reply; an unreadable body still names its id (so the caller hears why).
pub fn decode_reply(frames: &[Vec<u8>]) -> Result<Reply, DecodeError> {
    if frames.len() < 3 {
        return Err(DecodeError::new("bad_request", format!("reply: expected >= 3 frames, got {}", frames.len()), None));
    }
    if frames[0] != TAG {
        return Err(DecodeError::new("unsupported_version", "reply tag is not MOOR1", None));
    }
    let h = header(&frames[1])?;
    let id = match get(&h, "id") {
        None | Some(Value::Nil) => None,
        Some(Value::Integer(i)) => i.as_u64(),
        Some(_) => return Err(DecodeError::new("bad_request", "reply id must be an integer or nil", None)),
    };
    let ok = match get(&h, "ok") {
        Some(Value::Boolean(b)) => *b,
        _ => return Err(DecodeError::new("bad_request", "reply header needs a bool 'ok'", id)),
    };
    let epoch = get(&h, "ep").and_then(|v| v.as_str()).unwrap_or("").to_string();
    let body = decode_body(&frames[2], limits::MAX_MESSAGE_SIZE, id)?;
    Ok(Reply { id, ok, epoch, body, attachments: frames[3..].to_vec() })
}

pub fn encode_stream(topic: &str, seq: u64, epoch: &str, body: &Value, attachments: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let h = map_of([("seq", Value::from(seq)), ("ep", Value::from(epoch))]);
    let mut frames = vec![topic.as_bytes().to_vec(), TAG.to_vec(), codec::encode(&h), codec::encode(body)];
    frames.extend(attachments.iter().cloned());
    frames
}

pub fn encode_welcome(topic: &str, seq: u64, epoch: &str) -> Vec<Vec<u8>> {
    let h = map_of([("seq", Value::from(seq)), ("ep", Value::from(epoch)), ("welcome", Value::from(true))]);
    vec![topic.as_bytes().to_vec(), TAG.to_vec(), codec::encode(&h), NIL.to_vec()]
}

pub fn decode_stream(frames: &[Vec<u8>]) -> Result<StreamMessage, DecodeError> {
    if frames.len() < 4 || frames[1] != TAG {
        return Err(DecodeError::new("bad_request", "stream message: expected [topic, TAG, header, body]", None));
    }
    let h = header(&frames[2])?;
    let seq = match int(get(&h, "seq")).and_then(|i| i.as_u64()) {
        Some(s) if s <= limits::MAX_ID => s,
        _ => return Err(DecodeError::new("bad_request", "stream header needs an integer 'seq' in [0, 2^53)", None)),
    };
    let topic = String::from_utf8(frames[0].clone()).map_err(|_| DecodeError::new("bad_request", "stream topic is not UTF-8", None))?;
    let body = decode_body(&frames[3], limits::MAX_MESSAGE_SIZE, None)?;
    Ok(StreamMessage {
        topic,
        seq,
        epoch: get(&h, "ep").and_then(|v| v.as_str()).unwrap_or("").to_string(),
        body,
        attachments: frames[4..].to_vec(),
        welcome: matches!(get(&h, "welcome"), Some(Value::Boolean(true))),
    })
}
