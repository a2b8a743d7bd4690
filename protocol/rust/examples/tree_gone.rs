//! Clients of one local tree across its end, as an editor polling it makes them; each outcome
//! is printed as {result} or {error: <name>, message, attempts, detail}.
//! tests/test_clients_tree_gone.py drives it.
//!
//! `down`: three clients, found by the tree's instance name (under `$XDG_RUNTIME_DIR`), made
//! from its connection file, and given its directory. Each says `sys.ping` to `actor`, then the
//! program prints `{"ready": true}` and waits for a line on stdin (the tree is stopped
//! meanwhile); then the first two call twice more and the third once, and it prints one JSON
//! line: {"instance": [..], "file": [..], "dir": [..]}. A client that found its tree is told
//! `not_running` once that tree has ended; one given a directory waits for a tree to come up
//! there.
//!
//! `kill`: two clients found by instance name, with budgets of 20 s. One calls `fake.held` (not
//! idempotent, its reply held back) in a thread, and the program prints `{"ready": true}`; the
//! tree's root is killed meanwhile, which ends that call, and the program prints
//! {"held", "ping", "effect"}: that call's outcome, then the other client's `sys.ping` and
//! `fake.effect`. It waits for a line on stdin (a new tree takes the instance meanwhile) and
//! prints the same client's `fake.effect` and `sys.ping` to it: {"effect", "ping"}.
//!
//!   cargo run --example tree_gone -- down <instance> <tree.json> <runtime dir> <actor>
//!   cargo run --example tree_gone -- kill <instance> <actor>

use std::io::{BufRead, Write};
use std::path::PathBuf;

use moorage_client::{Client, Error, Options, Value};
use serde_json::json;

fn outcome(client: &mut Client, actor: &str, op: &str) -> serde_json::Value {
    match client.call(actor, op, Value::Nil) {
        Ok(result) => json!({"result": serde_json::to_value(&result).unwrap()}),
        Err(Error { error, attempts, .. }) => json!({
            "error": error.name, "message": error.message, "attempts": attempts,
            "detail": serde_json::to_value(&error.detail).unwrap(),
        }),
    }
}

fn say(line: serde_json::Value) {
    println!("{line}");
    std::io::stdout().flush().expect("stdout");
}

fn wait_for_a_line() {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
}

fn down(args: &mut impl Iterator<Item = String>) -> Result<(), Error> {
    let mut arg = |what: &str| args.next().unwrap_or_else(|| panic!("usage: tree_gone down <instance> <tree.json> <dir> <actor>: no {what}"));
    let (instance, file, dir, actor) = (arg("instance"), PathBuf::from(arg("tree.json")), PathBuf::from(arg("dir")), arg("actor"));
    // (budgets longer than an attempt's 1 s: a call told `not_running` was told at an attempt)
    let mut by_instance = Client::new(Options { instance: Some(instance), timeout: 10.0, ..Options::default() })?;
    let mut by_file = Client::from_connection_file(&file, Options { timeout: 10.0, ..Options::default() })?;
    let mut by_dir = Client::new(Options { runtime_dir: Some(dir), timeout: 2.0, ..Options::default() })?;
    for c in [&mut by_instance, &mut by_file, &mut by_dir] {
        c.call(&actor, "sys.ping", Value::Nil)?;
    }
    say(json!({"ready": true}));
    wait_for_a_line();
    let ping = |c: &mut Client| outcome(c, &actor, "sys.ping");
    let instance = [ping(&mut by_instance), ping(&mut by_instance)];
    let file = [ping(&mut by_file), ping(&mut by_file)];
    let dir = [ping(&mut by_dir)];
    say(json!({"instance": instance, "file": file, "dir": dir}));
    Ok(())
}

fn kill(args: &mut impl Iterator<Item = String>) -> Result<(), Error> {
    let mut arg = |what: &str| args.next().unwrap_or_else(|| panic!("usage: tree_gone kill <instance> <actor>: no {what}"));
    let (instance, actor) = (arg("instance"), arg("actor"));
    // (a budget far longer than an attempt's 1 s: one told `not_running` at once was not sent)
    let options = Options { instance: Some(instance), timeout: 20.0, ..Options::default() };
    let mut held = Client::new(options.clone())?;
    let mut c = Client::new(options)?;
    c.call(&actor, "fake.count", Value::Nil)?; // (its ops learned while the tree runs)
    let to = actor.clone();
    let in_flight = std::thread::spawn(move || outcome(&mut held, &to, "fake.held"));
    say(json!({"ready": true}));
    let held = in_flight.join().expect("the fake.held thread");
    let ping = outcome(&mut c, &actor, "sys.ping");
    let effect = outcome(&mut c, &actor, "fake.effect");
    say(json!({"held": held, "ping": ping, "effect": effect}));
    wait_for_a_line();
    let effect = outcome(&mut c, &actor, "fake.effect");
    let ping = outcome(&mut c, &actor, "sys.ping");
    say(json!({"effect": effect, "ping": ping}));
    Ok(())
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("down") => down(&mut args),
        Some("kill") => kill(&mut args),
        other => panic!("usage: tree_gone down|kill ...: not {other:?}"),
    }
}
