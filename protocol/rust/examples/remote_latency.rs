//! A remote client that pushes its latency (PROTOCOL.md section 2, "Remote"): from a connection
//! file and this user's key pair (`$MOORAGE_KEYS_DIR/client.key_secret`), over tcp with CURVE,
//! with `metrics_name` set, `n` calls of `op` to `actor`, its latency pushed every 100 ms to the
//! tcp `metrics.in` the file names. Prints one JSON line, {calls} or {error: <name>, message},
//! then keeps the client (and its pusher) until stdin closes.
//! tests/test_remote_rust_latency.py drives it against a tree on loopback tcp.
//!
//!   cargo run --example remote_latency -- <tree.json> <actor> <op> <n> <metrics_name>

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use moorage_client::{Client, Error, Options, Remote, Value};
use serde_json::json;

const USAGE: &str = "usage: remote_latency <tree.json> <actor> <op> <n> <metrics_name>";

fn main() {
    let mut args = std::env::args().skip(1);
    let file = PathBuf::from(args.next().expect(USAGE));
    let (actor, op) = (args.next().expect(USAGE), args.next().expect(USAGE));
    let n: u32 = args.next().and_then(|s| s.parse().ok()).expect(USAGE);
    let name = args.next().expect(USAGE);
    let options = Options {
        timeout: 10.0,
        metrics_name: Some(name),
        metrics_interval: Duration::from_millis(100),
        remote: Some(Remote { connection_file: file, keys: None, host: None }),
        ..Options::default()
    };
    let made = Client::new(options).and_then(|mut c| {
        for _ in 0..n {
            c.call(&actor, &op, Value::Nil)?;
        }
        Ok(c)
    });
    let (line, client) = match made {
        Ok(c) => (json!({"calls": n}), Some(c)),
        Err(Error { error, .. }) => (json!({"error": error.name, "message": error.message}), None),
    };
    println!("{line}");
    if client.is_some() {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    drop(client);
}
