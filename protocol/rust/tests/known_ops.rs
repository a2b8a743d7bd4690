//! A client knows which ops are idempotent before any actor has told it: those the schema
//! declares (`known_ops`, generated from protocol/schema/ops.json), so that a read-only call to
//! an actor that cannot answer its sys.info now (stopped, restarting) is resent and ends
//! `timeout`, never `outcome_unknown`. Once the actor's sys.info is learned, its own table
//! replaces the schema's for that actor (section 10). Against a fake actor in this process: a
//! ROUTER at the actor's ipc endpoint, in a context of its own.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::thread;

use moorage_client::calls::known_idempotent;
use moorage_client::codec::map_of;
use moorage_client::envelope::{decode_request, encode_reply};
use moorage_client::known_ops::SCHEMA_IDEMPOTENT;
use moorage_client::{args, Client, Options, Value};

const A: &str = "aaaaaaaaaaaaaaaa";

/// A directory of this test's own (short: an ipc path must fit in 107 bytes).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mrk-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The actor `watcher`'s endpoint, bound: it takes requests, and answers only as a test says.
fn watcher(dir: &Path) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let sock = ctx.socket(zmq::ROUTER).unwrap();
    sock.set_linger(0).unwrap();
    sock.set_rcvtimeo(10_000).unwrap();
    sock.bind(&format!("ipc://{}/watcher.rpc", dir.display())).unwrap();
    (ctx, sock)
}

fn client(dir: &Path) -> Client {
    Client::new(Options { runtime_dir: Some(dir.to_path_buf()), timeout: 1.0, ..Options::default() }).unwrap()
}

fn stat() -> Value {
    args([("path", Value::from("/tmp"))])
}

#[test]
fn a_read_only_call_to_an_actor_that_cannot_answer_its_sys_info_ends_timeout() {
    let dir = scratch("silent");
    let (_ctx, _sock) = watcher(&dir); // takes every request, answers none: a stopped process
    let mut c = client(&dir);
    assert_eq!(c.call("watcher", "fs.stat", stat()).unwrap_err().name(), "timeout");
    assert!(c.is_idempotent("watcher", "fs.stat"));
    let write = args([("path", Value::from("/tmp/x")), ("data", Value::from(""))]);
    assert_eq!(c.call("watcher", "fs.write", write).unwrap_err().name(), "outcome_unknown");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn once_the_actors_sys_info_is_learned_its_table_replaces_the_schemas() {
    let dir = scratch("says");
    let (ctx, sock) = watcher(&dir);
    // It says fs.stat may not be repeated, then answers nothing else.
    let answering = thread::spawn(move || {
        let mut frames = sock.recv_multipart(0).expect("no sys.info came");
        let rid = frames.remove(0);
        let req = decode_request(&frames).unwrap();
        assert_eq!(req.op, "sys.info");
        let entry = map_of([("idempotent", Value::from(false)), ("resumable", Value::from(false))]);
        let mut reply = vec![rid];
        reply.extend(encode_reply(Some(req.id), A, &map_of([("ops", map_of([("fs.stat", entry)]))]), &[]));
        sock.send_multipart(reply, 0).unwrap();
        (ctx, sock)
    });
    let mut c = client(&dir);
    assert!(c.learn_ops("watcher", Some(10.0)).is_empty());
    let _actor = answering.join().unwrap();
    assert!(!c.is_idempotent("watcher", "fs.stat"));
    assert!(c.is_idempotent("watcher", "sys.info"));
    assert!(c.is_idempotent("other", "fs.stat"), "an actor not asked keeps the schema's");
    assert_eq!(c.call("watcher", "fs.stat", stat()).unwrap_err().name(), "outcome_unknown");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn what_is_known_idempotent_built_ins_configured_the_actors_table_else_the_schemas() {
    let none = HashSet::new();
    assert!(SCHEMA_IDEMPOTENT.contains(&"fs.stat") && SCHEMA_IDEMPOTENT.contains(&"sys.config"));
    assert!(!SCHEMA_IDEMPOTENT.contains(&"fs.write") && !SCHEMA_IDEMPOTENT.contains(&"term.exec"));
    assert!(known_idempotent("fs.stat", None, &none));
    assert!(!known_idempotent("fs.write", None, &none));
    assert!(!known_idempotent("fs.stat", Some(&HashSet::from(["fs.read".to_string()])), &none));
    assert!(known_idempotent("sys.info", Some(&HashSet::new()), &none));
    assert!(known_idempotent("fs.write", Some(&HashSet::new()), &HashSet::from(["fs.write".to_string()])));
}
