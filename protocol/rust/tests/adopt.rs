//! `adopt` against a real tree: the conformance suite's (tests/test_clients_rust.py starts it
//! with `--parent` its own pid and runs `cargo test` with MOORAGE_CONFORMANCE_DIR set to its
//! runtime dir; without it this test says so and passes nothing else). A stand-in window and
//! this process each hold the tree beside whoever started it; adopting again adds no holder;
//! the window's exit lets only the window go. Whoever started the tree still holds it at the
//! end, and this process lets go by exiting: the tree is as it was.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moorage_client::codec::get;
use moorage_client::{adopt, Client, Options, Value};

/// Every pid holding the tree, as `lifecycle` says it (`holders` only when more than one does).
fn holders(life: &Value) -> Vec<i64> {
    if let Some(list) = get(life, "holders").and_then(|h| h.as_array()) {
        return list.iter().map(|p| p.as_i64().unwrap()).collect();
    }
    let attached = get(life, "state").and_then(|s| s.as_str()) == Some("attached");
    get(life, "parent").and_then(|p| p.as_i64()).filter(|_| attached).into_iter().collect()
}

fn lifecycle(c: &mut Client) -> Value {
    get(&c.call("supervisor", "sup.status", Value::Nil).unwrap(), "lifecycle").unwrap().clone()
}

fn parent(life: &Value) -> Option<i64> {
    get(life, "parent").and_then(|p| p.as_i64())
}

#[test]
fn adopt_holds_the_tree_beside_its_starter_once_per_pid() {
    let Some(dir) = std::env::var_os("MOORAGE_CONFORMANCE_DIR").map(PathBuf::from) else {
        println!("adopt: no tree (MOORAGE_CONFORMANCE_DIR unset): skipped");
        return;
    };
    let mut c = Client::new(Options { runtime_dir: Some(dir), timeout: 10.0, ..Options::default() }).unwrap();
    // A stand-in editor window: `cat` until killed (or until this process's end closes its stdin).
    let mut window = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let pid = window.id() as i64;
    let me = std::process::id() as i64;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let before = lifecycle(&mut c);
        assert_eq!(get(&before, "state").and_then(|s| s.as_str()), Some("attached"), "the conformance tree follows whoever started it");
        let starters = holders(&before);
        let life = get(&adopt(&mut c, Some(window.id())).unwrap(), "lifecycle").unwrap().clone();
        assert_eq!(parent(&life), Some(pid));
        assert_eq!(holders(&life), [starters.clone(), vec![pid]].concat());
        for _ in 0..2 {
            let life = get(&adopt(&mut c, None).unwrap(), "lifecycle").unwrap().clone();
            assert_eq!(parent(&life), Some(me));
            assert_eq!(holders(&life), [starters.clone(), vec![pid, me]].concat());
        }
        window.kill().unwrap();
        window.wait().unwrap();
        let end = Instant::now() + Duration::from_secs(20);
        let mut life = lifecycle(&mut c);
        while holders(&life).contains(&pid) {
            assert!(Instant::now() < end, "the window's exit not seen by the tree within 20 s");
            life = lifecycle(&mut c);
        }
        assert_eq!(get(&life, "state").and_then(|s| s.as_str()), Some("attached"));
        assert_eq!(holders(&life), [starters, vec![me]].concat());
    }));
    let _ = window.kill();
    let _ = window.wait();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
    println!("adopt: ok");
}
