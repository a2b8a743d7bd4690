//! An endpoint ZeroMQ refuses to connect to (an ipc path past a Unix socket's 107 bytes) is the
//! caller's `bad_args`, for a call and for a subscription, as in the other clients.

use moorage_client::{Client, Options, SubscribeOptions, Value};

#[test]
fn an_endpoint_too_long_to_connect_to_is_bad_args() {
    // (a dir of this user's alone: /tmp itself, open to all, is refused `forbidden`)
    let dir = std::env::temp_dir().join(format!("mrc-{}-connect", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Client::new(Options { runtime_dir: Some(dir.clone()), learn_ops: false, timeout: 5.0, ..Options::default() }).unwrap();
    let actor = "x".repeat(200);
    let e = c.call(&actor, "sys.ping", Value::Nil).unwrap_err();
    assert_eq!(e.error.name, "bad_args", "{}", e.error.message);
    assert!(e.error.message.contains("no rpc socket to connect to"), "{}", e.error.message);
    let e = c.subscribe(&actor, &["t"], SubscribeOptions::default()).err().expect("a subscription");
    assert_eq!(e.error.name, "bad_args", "{}", e.error.message);
    assert!(e.error.message.contains("no pub socket to connect to"), "{}", e.error.message);
    drop(c);
    std::fs::remove_dir_all(&dir).unwrap();
}
