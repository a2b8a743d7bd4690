//! A command run in a terminal session of a tree elsewhere (PROTOCOL.md section 2, "Remote"),
//! over tcp with CURVE, from a connection file and this user's key pair
//! (`$MOORAGE_KEYS_DIR/client.key_secret`): term.create a bash session with HOME set, then
//! term.exec `command` in it. term.exec is resumable (section 10): learned from the terminal's
//! sys.info before the first call, it is resent unpinned if the link drops, and a successor
//! of the terminal answers it. Prints one JSON line when the session is made, {session,
//! resumable}, and one with the outcome, {exit_code, output} or {error: <name>, message}.
//! tests/test_remote_rust_resumable.py drives it while it kills the terminal.
//!
//!   cargo run --example remote_exec -- <tree.json> <home> <command>

use std::path::PathBuf;

use moorage_client::codec::get;
use moorage_client::{args, Client, Error, Options, Remote, Value};
use serde_json::json;

const USAGE: &str = "usage: remote_exec <tree.json> <home> <command>";

fn main() {
    let mut argv = std::env::args().skip(1);
    let file = PathBuf::from(argv.next().expect(USAGE));
    let (home, command) = (argv.next().expect(USAGE), argv.next().expect(USAGE));
    let options = Options {
        timeout: 60.0,
        remote: Some(Remote { connection_file: file, keys: None, host: None }),
        ..Options::default()
    };
    let outcome = Client::new(options).and_then(|mut c| {
        let env = Value::Map(vec![
            (Value::from("HOME"), Value::from(home.as_str())),
            (Value::from("PATH"), Value::from(std::env::var("PATH").unwrap_or_default())),
        ]);
        let made = c.call("terminal", "term.create", args([("shell", Value::from("bash")), ("env", env)]))?;
        let session = get(&made, "session").and_then(Value::as_str).unwrap_or_default().to_string();
        println!("{}", json!({"session": session, "resumable": c.is_resumable("terminal", "term.exec")}));
        c.call("terminal", "term.exec", args([("session", Value::from(session)), ("command", Value::from(command))]))
    });
    let line = match outcome {
        Ok(r) => json!({
            "exit_code": get(&r, "exit_code").and_then(Value::as_i64),
            "output": get(&r, "output").and_then(Value::as_str),
        }),
        Err(Error { error, .. }) => json!({"error": error.name, "message": error.message}),
    };
    println!("{line}");
}
