//! What the test files share: the repository's paths and JSON <-> msgpack values as the
//! vector files mean them (PROTOCOL.md section 17).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use moorage_client::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

pub fn load(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(rel)).unwrap()).unwrap()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// JSON to a wire value: a number with a fraction is float64, {"$bin": hex} is bin.
pub fn to_wire(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                Value::F64(n.as_f64().unwrap())
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(to_wire).collect()),
        serde_json::Value::Object(o) => {
            if o.len() == 1 {
                if let Some(serde_json::Value::String(h)) = o.get("$bin") {
                    return Value::Binary(unhex(h));
                }
            }
            Value::Map(o.iter().map(|(k, v)| (Value::from(k.as_str()), to_wire(v))).collect())
        }
    }
}

/// A wire value as JSON (floats stay floats, bin as {"$bin": hex}).
pub fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => serde_json::Value::Bool(*b),
        Value::Integer(i) => match i.as_u64() {
            Some(u) => serde_json::Value::from(u),
            None => serde_json::Value::from(i.as_i64().unwrap()),
        },
        Value::F32(f) => serde_json::Value::from(*f as f64),
        Value::F64(f) => serde_json::Value::from(*f),
        Value::String(s) => serde_json::Value::from(s.as_str().unwrap()),
        Value::Binary(b) => serde_json::json!({"$bin": hex(b)}),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => serde_json::Value::Object(m.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), to_json(v))).collect()),
        Value::Ext(..) => panic!("no ext in the protocol"),
    }
}

/// The sockets of a fake actor `alpha` in `dir`: its context, its publisher (an XPUB, which
/// hands over each subscription, waited for up to `patience`) and its ROUTER.
pub fn alpha_sockets(dir: &Path, patience: Duration) -> (zmq::Context, zmq::Socket, zmq::Socket) {
    let ctx = zmq::Context::new();
    let publisher = ctx.socket(zmq::XPUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.set_rcvtimeo(patience.as_millis() as i32).unwrap();
    publisher.bind(&format!("ipc://{}/alpha.pub", dir.display())).unwrap();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.bind(&format!("ipc://{}/alpha.rpc", dir.display())).unwrap();
    (ctx, publisher, router)
}
