//! A client of a tree elsewhere (PROTOCOL.md section 2, "Remote"): from its connection file
//! and this user's key pair (`$MOORAGE_KEYS_DIR/client.key_secret`), over tcp with CURVE, a
//! call to `alpha` and three messages of `beta`'s stream `rt` (tests/test_remote_clients.py's
//! fake tree). Prints one JSON line: {work, stream} or {error: <name>, message}.
//!
//!   cargo run --example remote -- <tree.json>

use std::path::PathBuf;
use std::time::Duration;

use moorage_client::{Client, Error, Options, Remote, StreamEvent, SubscribeOptions, Value};

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

fn run(c: &mut Client) -> Result<(i64, Vec<i64>), Error> {
    let work = c.call("alpha", "fake.work", Value::Nil)?;
    let done = get(&work, "done").and_then(Value::as_i64).unwrap_or(-1);
    let mut sub = c.subscribe("beta", &["rt"], SubscribeOptions::default())?;
    loop {
        let info = c.call("beta", "sys.info", Value::Nil)?;
        let applied = get(&info, "subscriptions").and_then(|s| get(s, "applied")).and_then(Value::as_i64);
        if applied.unwrap_or(0) >= 1 {
            break;
        }
    }
    let args = Value::Map(vec![("topic".into(), "rt".into()), ("n".into(), 3.into())]);
    c.call("beta", "fake.publish", args)?;
    let mut got = Vec::new();
    while got.len() < 3 {
        match sub.next(Some(Duration::from_secs(10)))? {
            Some(StreamEvent::Message(m)) if !m.welcome => got.push(get(&m.body, "i").and_then(Value::as_i64).unwrap_or(-1)),
            Some(_) => {}
            None => break,
        }
    }
    Ok((done, got))
}

fn main() {
    let file = PathBuf::from(std::env::args().nth(1).expect("usage: remote <tree.json>"));
    let options = Options { timeout: 5.0, remote: Some(Remote { connection_file: file, keys: None, host: None }), ..Options::default() };
    let line = match Client::new(options).and_then(|mut c| run(&mut c)) {
        Ok((done, stream)) => format!("{{\"work\": {{\"done\": {done}}}, \"stream\": {stream:?}}}"),
        Err(e) => serde_json::json!({"error": e.error.name, "message": e.error.message}).to_string(),
    };
    println!("{line}");
}
