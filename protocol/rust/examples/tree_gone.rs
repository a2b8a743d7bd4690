//! Three clients of one local tree, as an editor polling it makes them: found by its instance
//! name (under `$XDG_RUNTIME_DIR`), made from its connection file, and given its directory.
//! Each says `sys.ping` to `actor`, then the program prints `{"ready": true}` and waits for a
//! line on stdin (the tree is stopped meanwhile); then the first two call twice more and the
//! third once, and it prints one JSON line: {"instance": [..], "file": [..], "dir": [..]}, each
//! outcome {result} or {error: <name>, message}. A client that found its tree is told
//! `not_running` once that tree has ended; one given a directory waits for a tree to come up
//! there. tests/test_clients_tree_gone.py drives it.
//!
//!   cargo run --example tree_gone -- <instance> <tree.json> <runtime dir> <actor>

use std::io::{BufRead, Write};
use std::path::PathBuf;

use moorage_client::{Client, Error, Options, Value};
use serde_json::json;

fn outcome(client: &mut Client, actor: &str) -> serde_json::Value {
    match client.call(actor, "sys.ping", Value::Nil) {
        Ok(result) => json!({"result": serde_json::to_value(&result).unwrap()}),
        Err(Error { error, .. }) => json!({"error": error.name, "message": error.message}),
    }
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mut arg = |what: &str| args.next().unwrap_or_else(|| panic!("usage: tree_gone <instance> <tree.json> <dir> <actor>: no {what}"));
    let (instance, file, dir, actor) = (arg("instance"), PathBuf::from(arg("tree.json")), PathBuf::from(arg("dir")), arg("actor"));
    // (budgets longer than an attempt's 1 s: a call told `not_running` was told at an attempt)
    let mut by_instance = Client::new(Options { instance: Some(instance), timeout: 10.0, ..Options::default() })?;
    let mut by_file = Client::from_connection_file(&file, Options { timeout: 10.0, ..Options::default() })?;
    let mut by_dir = Client::new(Options { runtime_dir: Some(dir), timeout: 2.0, ..Options::default() })?;
    for c in [&mut by_instance, &mut by_file, &mut by_dir] {
        c.call(&actor, "sys.ping", Value::Nil)?;
    }
    println!("{}", json!({"ready": true}));
    std::io::stdout().flush().expect("stdout");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).expect("stdin");
    let instance = [outcome(&mut by_instance, &actor), outcome(&mut by_instance, &actor)];
    let file = [outcome(&mut by_file, &actor), outcome(&mut by_file, &actor)];
    let dir = [outcome(&mut by_dir, &actor)];
    println!("{}", json!({"instance": instance, "file": file, "dir": dir}));
    Ok(())
}
