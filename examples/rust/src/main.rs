//! What an editor written in Rust does with moorage, as a binary an editor author can copy:
//! adopt the tree if one runs (hold it beside the window that started it, or take it over when
//! that window is gone; else start one beside itself), open a terminal session, run a command,
//! stream its output, watch a folder.
//!
//!   cargo run --bin editor       MOORAGE_RUNTIME_DIR picks the tree (PROTOCOL.md section 2);
//!                                MOORAGE_BIN the `moorage` command used to start one.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moorage_client::codec::get;
use moorage_client::endpoints::runtime_dir;
use moorage_client::{adopt, args, CallOptions, Client, Options, StreamEvent, SubscribeOptions, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(serde::Serialize)]
struct Exec<'a> {
    session: &'a str,
    command: &'a str,
}

#[derive(serde::Deserialize)]
struct ExecResult {
    exit_code: Option<i64>,
    output: String,
    mode: String,
}

/// Adopt the tree, or start one and wait until the actors this editor uses answer.
fn adopt_or_start(c: &mut Client) -> Result<Option<Child>> {
    let quick = CallOptions { timeout: Some(0.5), ..CallOptions::default() };
    if let Ok(status) = c.request("supervisor", "sup.status", Value::Nil, quick) {
        let state = get(&status.body, "lifecycle").map(|life| text(life, "state")).unwrap_or_default();
        if state == "attached" || state == "orphaned" {
            // Held by another window (or by nobody, and stopping at the end of its grace):
            // this process holds it too from now on, so that the tree runs as long as one
            // window does.
            let adopted = adopt(c, None)?;
            let life = get(&adopted, "lifecycle").ok_or("adopt: no lifecycle in the answer")?;
            let holders = get(life, "holders").and_then(|h| h.as_array()).map_or(1, |h| h.len());
            println!("adopted the tree in {} (it was {state}; {holders} hold it now)", c.runtime_dir.display());
        } else {
            // Standalone: it follows no editor and runs until `moorage down`; adopting would
            // make it stop when this process does.
            println!("using the tree in {} (it follows no editor)", c.runtime_dir.display());
        }
        return Ok(None);
    }
    let bin = std::env::var("MOORAGE_BIN").unwrap_or_else(|_| "moorage".into());
    // --parent: the tree follows this process (gone, it is orphaned for its grace, then
    // stops), as an editor's must
    let mut child = Command::new(bin).arg("--instance-dir").arg(&c.runtime_dir).arg("up")
        .arg("--parent").arg(std::process::id().to_string())
        .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    println!("started the tree in {} (pid {})", c.runtime_dir.display(), child.id());
    for actor in ["supervisor", "watcher", "terminal"] {
        while c.hello(actor).is_err() {
            if let Some(status) = child.try_wait()? {
                return Err(format!("moorage up exited: {status}").into());
            }
        }
    }
    Ok(Some(child))
}

fn text(v: &Value, key: &str) -> String {
    get(v, key).and_then(|x| x.as_str()).unwrap_or_default().to_string()
}

fn run(c: &mut Client, folder: &std::path::Path) -> Result<()> {
    // A terminal session, its output stream (from seq 1: nothing missed), a command in it.
    let created = c.call("terminal", "term.create", args([
        ("cwd", Value::from(folder.to_str().unwrap())), ("cols", Value::from(100)), ("rows", Value::from(30)),
    ]))?;
    let session = text(&created, "session");
    println!("session {session}");
    let mut output = c.subscribe("terminal", &[&format!("term.out.{session}")], SubscribeOptions { from_seq: Some(1), ..Default::default() })?;
    // Typed: args from a struct, the result into one (unknown result fields are ignored).
    let r: ExecResult = c.call_typed("terminal", "term.exec", &Exec { session: &session, command: "echo hello from moorage" })?;
    println!("exit {}: {:?} ({})", r.exit_code.map_or("none".into(), |x| x.to_string()), r.output, r.mode);
    let mut streamed = String::new();
    while !streamed.contains("hello from moorage\r\n") {
        match output.next(Some(Duration::from_secs(10)))? {
            Some(StreamEvent::Message(m)) => streamed.push_str(&String::from_utf8_lossy(&m.attachments[0])),
            Some(other) => println!("stream: {other:?}"), // a Loss or a Reset: say so, never hide it
            None => return Err("no output within 10 s".into()),
        }
    }
    println!("streamed {} characters of output, the command's line among them", streamed.len());

    // Watch a folder, change a file in it, see the event.
    let mut events = c.subscribe("watcher", &["fs.event"], SubscribeOptions::default())?;
    events.until_live(Duration::from_secs(10))?;
    let watch = c.call("watcher", "fs.watch", args([("path", Value::from(folder.to_str().unwrap())), ("recursive", Value::from(true))]))?;
    let file = folder.join("notes.txt");
    std::fs::write(&file, "a change\n")?;
    let end = Instant::now() + Duration::from_secs(10);
    'events: loop {
        let left = end.saturating_duration_since(Instant::now());
        let Some(ev) = events.next(Some(left))? else { return Err("no file event within 10 s".into()) };
        if let StreamEvent::Message(m) = ev {
            for e in get(&m.body, "events").and_then(|x| x.as_array()).into_iter().flatten() {
                if text(e, "path") == file.to_str().unwrap() {
                    println!("watched: {} {} {}", text(e, "kind"), text(e, "type"), text(e, "path"));
                    break 'events;
                }
            }
        }
    }
    c.call("watcher", "fs.unwatch", args([("watch", get(&watch, "watch").unwrap().clone())]))?;
    c.call("terminal", "term.close", args([("session", Value::from(session.as_str()))]))?;
    for row in c.latency_report() {
        println!("latency {}/{}: n={} p50={} us", row.actor, row.op, row.summary.count, row.summary.p50);
    }
    Ok(())
}

fn main() -> Result<()> {
    let dir = runtime_dir(None)?;
    let mut c = Client::new(Options { runtime_dir: Some(dir), timeout: 10.0, metrics_name: Some("rust-editor".into()), ..Options::default() })?;
    let started = adopt_or_start(&mut c)?;
    let folder = std::env::temp_dir().join(format!("moorage-editor-{}", std::process::id()));
    std::fs::create_dir_all(&folder)?;
    let outcome = run(&mut c, &folder);
    std::fs::remove_dir_all(&folder)?;
    if let Some(mut child) = started {
        c.call("supervisor", "sup.stop", Value::Nil)?;
        child.wait()?;
        println!("stopped the tree it started");
    }
    outcome?;
    println!("ok");
    Ok(())
}
