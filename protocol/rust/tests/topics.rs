//! A subscription's topic is at most MAX_TOPIC_LEN bytes, and the client refuses a longer one
//! itself. A test file of its own: it compares the process's descriptors, which a test running
//! beside it would change.

use std::collections::BTreeSet;

use moorage_client::limits::MAX_TOPIC_LEN;
use moorage_client::{Client, Options, SubscribeOptions};

/// This process's descriptors, each with what it is (but the listing's own).
fn fds() -> BTreeSet<String> {
    let listing = std::path::PathBuf::from(format!("/proc/{}/fd", std::process::id()));
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(link) = std::fs::read_link(entry.path()) {
            if link != listing {
                out.insert(format!("{} {}", entry.file_name().to_string_lossy(), link.display()));
            }
        }
    }
    out
}

#[test]
fn a_topic_longer_than_the_limit_is_refused_before_a_socket_is_made_and_one_of_the_limit_is_subscribed() {
    let dir = std::env::temp_dir().join(format!("mrt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ctx = zmq::Context::new();
    let xpub = ctx.socket(zmq::XPUB).unwrap();
    xpub.set_linger(0).unwrap();
    xpub.set_rcvtimeo(5000).unwrap();
    xpub.bind(&format!("ipc://{}/alpha.pub", dir.display())).unwrap();
    let mut c = Client::new(Options { runtime_dir: Some(dir.clone()), learn_ops: false, ..Options::default() }).unwrap();

    // Bytes, not characters: the second is 129 of them.
    for (topic, bytes) in [("x".repeat(MAX_TOPIC_LEN + 1), 257), ("é".repeat(129), 258)] {
        let before = fds();
        match c.subscribe("alpha", &["ok", &topic], SubscribeOptions::default()) {
            Ok(_) => panic!("subscribed a topic of {bytes} bytes"),
            Err(e) => {
                assert_eq!(e.name(), "bad_args", "{e}");
                assert!(e.error.message.starts_with(&format!("alpha: a topic of {bytes} bytes (at most 256)")), "{e}");
            }
        }
        // The client's context has made no socket yet: one would start its threads too.
        let opened: Vec<_> = fds().difference(&before).cloned().collect();
        assert!(opened.is_empty(), "opened {opened:?}");
    }

    let topic = "é".repeat(MAX_TOPIC_LEN / 2); // 256 bytes
    let sub = c.subscribe("alpha", &[&topic], SubscribeOptions::default()).unwrap();
    // The first subscription to reach the publisher: none of the refused ones did.
    assert_eq!(xpub.recv_bytes(0).expect("no subscription came"), [b"\x01", topic.as_bytes()].concat());
    drop(sub);
    std::fs::remove_dir_all(&dir).unwrap();
}
