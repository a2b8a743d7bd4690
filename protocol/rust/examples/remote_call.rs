//! One call to a tree elsewhere (PROTOCOL.md section 2, "Remote"), from its connection file and
//! this user's key pair (`$MOORAGE_KEYS_DIR/client.key_secret`), over tcp with CURVE. With
//! `--hello` the actor's epoch is learned first: the life a call that may have run is pinned
//! to when it is resent (section 10). Prints one JSON line: {result, seconds} or {error:
//! <name>, message, detail, seconds}, `seconds` the call's own time.
//! tests/test_remote_once_rust.py drives it while it resets the link, kills the actor or
//! refuses the key.
//!
//!   cargo run --example remote_call -- <tree.json> <actor> <op> <timeout> <attempt_timeout> [--hello]

use std::path::PathBuf;
use std::time::Instant;

use moorage_client::{Client, Error, Options, Remote, Value};
use serde_json::json;

fn seconds(arg: Option<String>) -> f64 {
    arg.and_then(|s| s.parse().ok()).expect("usage: remote_call <tree.json> <actor> <op> <timeout> <attempt_timeout> [--hello]")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let file = PathBuf::from(args.next().expect("a connection file"));
    let (actor, op) = (args.next().expect("an actor"), args.next().expect("an op"));
    let (timeout, attempt_timeout) = (seconds(args.next()), seconds(args.next()));
    let hello = args.next().as_deref() == Some("--hello");
    let remote = Remote { connection_file: file, keys: None, host: None };
    let options = Options { timeout, attempt_timeout, remote: Some(remote), ..Options::default() };
    let mut started = Instant::now();
    let outcome = Client::new(options).and_then(|mut c| {
        if hello {
            c.hello(&actor)?;
        }
        started = Instant::now();
        c.call(&actor, &op, Value::Nil)
    });
    let took = started.elapsed().as_secs_f64();
    let line = match outcome {
        Ok(result) => json!({"result": serde_json::to_value(&result).unwrap(), "seconds": took}),
        Err(Error { error, .. }) => json!({
            "error": error.name, "message": error.message, "seconds": took,
            "detail": error.detail.map(|d| serde_json::to_value(&d).unwrap()),
        }),
    };
    println!("{line}");
}
