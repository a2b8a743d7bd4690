//! The live conformance suite (protocol/conformance/cases.json, PROTOCOL.md section 18) driven
//! by this crate against a real tree: tests/test_clients_rust.py starts the tree of
//! protocol/conformance/tree.toml and runs `cargo test` with MOORAGE_CONFORMANCE_DIR set to
//! its runtime dir. Without it this test says so and passes nothing else (that driver fails
//! unless it sees every case pass).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use moorage_client::codec::get;
use moorage_client::limits::STREAM_HWM;
use moorage_client::{args, CallOptions, Client, Error, Options, StreamEvent, SubscribeOptions, Value};

type Spec = serde_json::Value;

fn client(dir: &PathBuf) -> Client {
    Client::new(Options { runtime_dir: Some(dir.clone()), timeout: 10.0, ..Options::default() }).unwrap()
}

fn until<T>(what: &str, seconds: f64, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < end, "no {what} within {seconds} s");
    }
}

fn message(ev: Option<StreamEvent>) -> moorage_client::StreamMessage {
    match ev {
        Some(StreamEvent::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn token() -> String {
    format!("{:x}", std::process::id() as u64 * 1_000_003 + Instant::now().elapsed().as_nanos() as u64)
}

fn hello_every_actor(c: &mut Client, _: &Spec, _: &PathBuf) {
    let eps = c.call("supervisor", "sup.endpoints", Value::Nil).unwrap();
    let mut actors = vec!["supervisor".to_string()];
    actors.extend(eps.as_map().unwrap().iter().map(|(k, _)| k.as_str().unwrap().to_string()));
    for need in ["metrics", "resource", "parser", "watcher", "terminal", "conf"] {
        assert!(actors.iter().any(|a| a == need), "{need}");
    }
    for actor in &actors {
        let h = c.hello(actor).unwrap();
        assert_eq!(get(&h, "proto").unwrap().as_i64(), Some(1));
        assert_eq!(get(&h, "max_msg").unwrap().as_i64(), Some(64 * 1024 * 1024));
        assert_eq!(get(&h, "actor").unwrap().as_str(), Some(actor.as_str()));
        let ep = get(&h, "ep").unwrap().as_str().unwrap().to_string();
        assert!(ep.len() == 16 && ep.chars().all(|ch| ch.is_ascii_hexdigit() && !ch.is_ascii_uppercase()));
        assert_eq!(c.epoch(actor), Some(ep.as_str()));
    }
}

fn one_op_per_actor(c: &mut Client, spec: &Spec, _: &PathBuf) {
    let dir = std::env::temp_dir().join(format!("moorage-conf-{}", token()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("probe.txt"), spec["probe_text"].as_str().unwrap()).unwrap();
    for call in spec["calls"].as_array().unwrap() {
        let op = call["op"].as_str().unwrap();
        let mut a = call["args"].clone();
        if let Some(o) = a.as_object_mut() {
            for v in o.values_mut() {
                if let Some(s) = v.as_str() {
                    *v = serde_json::Value::from(s.replace("$dir", dir.to_str().unwrap()));
                }
            }
        }
        let got = c.call(call["actor"].as_str().unwrap(), op, common::to_wire(&a)).unwrap_or_else(|e| panic!("{op}: {e}"));
        let want = &call["expect"];
        assert_eq!(if got.is_map() { "map" } else if got.is_array() { "list" } else { "other" }, want["type"].as_str().unwrap(), "{op}");
        for k in want.get("keys").and_then(|k| k.as_array()).into_iter().flatten() {
            assert!(get(&got, k.as_str().unwrap()).is_some(), "{op}: {k}");
        }
        for (k, v) in want.get("equals").and_then(|e| e.as_object()).into_iter().flatten() {
            assert_eq!(common::to_json(get(&got, k).unwrap()), *v, "{op}: {k}");
        }
        if op == "fs.stat" {
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::metadata(dir.join("probe.txt")).unwrap();
            let mtime_ns = md.mtime() as u64 * 1_000_000_000 + md.mtime_nsec() as u64;
            assert_eq!(get(&got, "mtime_ns").unwrap().as_u64(), Some(mtime_ns));
            assert_eq!(get(&got, "ino").unwrap().as_u64(), Some(md.ino()));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn errors(c: &mut Client, spec: &Spec, _: &PathBuf) {
    for call in spec["calls"].as_array().unwrap() {
        let (actor, op) = (call["actor"].as_str().unwrap(), call["op"].as_str().unwrap());
        let e: Error = c.call(actor, op, common::to_wire(&call["args"])).expect_err(op);
        let w = common::to_json(&e.error.to_wire());
        for (k, v) in call["error"].as_object().unwrap() {
            assert_eq!(&w[k], v, "{op}: {k}");
        }
        for k in call.get("detail_keys").and_then(|k| k.as_array()).into_iter().flatten() {
            assert!(get(e.detail().unwrap(), k.as_str().unwrap()).is_some(), "{op}: detail.{k}");
        }
        assert_eq!(e.attempts, 1, "{op}");
        assert!(get(&c.call(actor, "sys.ping", Value::Nil).unwrap(), "ep").is_some());
    }
}

fn retry_same_id(c: &mut Client, spec: &Spec, _: &PathBuf) {
    let (actor, op, count) = (spec["actor"].as_str().unwrap(), spec["op"].as_str().unwrap(), spec["count_op"].as_str().unwrap());
    let effects = |c: &mut Client| get(&c.call(actor, count, Value::Nil).unwrap(), "effects").unwrap().as_u64().unwrap();
    let before = effects(c);
    let first = c.request(actor, op, Value::Nil, CallOptions::default()).unwrap();
    let again = c.request(actor, op, Value::Nil, CallOptions { id: first.id, ..CallOptions::default() }).unwrap();
    assert!(first.ok);
    assert_eq!(again.body, first.body);
    assert_eq!(effects(c), before + 1);
}

fn gap_repaired(c: &mut Client, spec: &Spec, _: &PathBuf) {
    let actor = spec["actor"].as_str().unwrap();
    let topic = format!("{}.{}", spec["topic"].as_str().unwrap(), token());
    let (n, size) = (spec["n"].as_u64().unwrap(), spec["size"].as_u64().unwrap());
    let rcvhwm = spec["rcvhwm"].as_i64().map(|v| v as i32); // (null: the client's default)
    let mut sub = c.subscribe(actor, &[&topic], SubscribeOptions { rcvhwm, ..Default::default() }).unwrap();
    assert_eq!(sub.rcvhwm().unwrap(), rcvhwm.unwrap_or(STREAM_HWM));
    assert!(sub.until_live(Duration::from_secs(10)).unwrap().is_empty());
    c.call(actor, spec["publish_op"].as_str().unwrap(), args([("topic", Value::from(topic.as_str())), ("n", Value::from(n)), ("size", Value::from(size))])).unwrap();
    let quiet = Duration::from_secs_f64(spec["quiet_s"].as_f64().unwrap());
    for seq in 1..=n {
        let mut ev = sub.next(Some(quiet)).unwrap();
        if ev.is_none() {
            sub.catch_up(); // quiet before the end: the tail was lost at the high-water mark
            ev = sub.next(Some(Duration::from_secs(10))).unwrap();
        }
        let m = message(ev);
        assert_eq!((m.seq, get(&m.body, "i").unwrap().as_u64(), m.attachments[0].len() as u64), (seq, Some(seq - 1), size));
    }
    assert!(sub.tracker.replays_asked >= 1, "no gap was seen: nothing was repaired");
}

fn loss_reported(c: &mut Client, spec: &Spec, _: &PathBuf) {
    let actor = spec["actor"].as_str().unwrap();
    let topic = format!("{}.{}", spec["topic"].as_str().unwrap(), token());
    let n = spec["n"].as_u64().unwrap();
    c.call(actor, spec["publish_op"].as_str().unwrap(), args([("topic", Value::from(topic.as_str())), ("n", Value::from(n))])).unwrap();
    let mut sub = c.subscribe(actor, &[&topic], SubscribeOptions { from_seq: Some(1), ..Default::default() }).unwrap();
    let (first, last) = (spec["lost"][0].as_u64().unwrap(), spec["lost"][1].as_u64().unwrap());
    let ep = c.epoch(actor).unwrap().to_string();
    assert_eq!(sub.next(Some(Duration::from_secs(10))).unwrap(), Some(StreamEvent::Loss { topic: topic.clone(), first, last, epoch: ep }));
    for seq in last + 1..=n {
        assert_eq!(message(sub.next(Some(Duration::from_secs(10))).unwrap()).seq, seq);
    }
    assert_eq!(sub.next(Some(Duration::from_millis(200))).unwrap(), None);
}

fn killed_mid_call(c: &mut Client, spec: &Spec, dir: &PathBuf) {
    let actor = spec["actor"].as_str().unwrap().to_string();
    let old = get(&c.hello(&actor).unwrap(), "ep").unwrap().as_str().unwrap().to_string();
    let (op, a, timeout) = (spec["op"].as_str().unwrap().to_string(), common::to_wire(&spec["args"]), spec["timeout_s"].as_f64().unwrap());
    let d = dir.clone();
    let worker_actor = actor.clone();
    let worker = std::thread::spawn(move || {
        let mut mine = client(&d);
        let _ = mine.hello(&worker_actor);
        let r = mine.request(&worker_actor, &op, a, CallOptions { timeout: Some(timeout), ..CallOptions::default() });
        (r, Instant::now())
    });
    until("the call in flight", 10.0, || {
        let info = c.call(&actor, "sys.info", Value::Nil).ok()?;
        (get(&info, "pending")?.as_u64() == Some(1)).then_some(())
    });
    let killed = Instant::now();
    c.call("supervisor", "sup.kill", args([("child", Value::from(actor.as_str()))])).unwrap();
    let (r, at) = worker.join().unwrap();
    let e = r.expect_err("the call succeeded");
    assert_eq!(e.name(), "outcome_unknown", "{e}");
    let took = at.duration_since(killed).as_secs_f64();
    assert!(took <= spec["within_s"].as_f64().unwrap(), "ended {took} s after the kill");
    let detail = e.detail().unwrap();
    assert_eq!(get(detail, "old_epoch").and_then(|v| v.as_str()), Some(old.as_str()));
    let new = get(detail, "new_epoch").unwrap();
    assert!(new.is_nil() || new.as_str().is_some_and(|n| n != old));
}

fn restart_epoch(c: &mut Client, spec: &Spec, _: &PathBuf) {
    let actor = spec["actor"].as_str().unwrap();
    let publish = spec["publish_op"].as_str().unwrap();
    let topic = format!("{}.{}", spec["topic"].as_str().unwrap(), token());
    let a = get(&c.hello(actor).unwrap(), "ep").unwrap().as_str().unwrap().to_string();
    let seen = c.restarts_seen(actor);
    let mut sub = c.subscribe(actor, &[&topic], SubscribeOptions::default()).unwrap();
    assert!(sub.until_live(Duration::from_secs(10)).unwrap().is_empty());
    let one = args([("topic", Value::from(topic.as_str())), ("n", Value::from(1))]);
    c.call(actor, publish, one.clone()).unwrap();
    let m = message(sub.next(Some(Duration::from_secs(10))).unwrap());
    assert_eq!((m.seq, m.epoch.as_str()), (1, a.as_str()));
    c.call("supervisor", "sup.restart", args([("child", Value::from(actor))])).unwrap();
    let b = until("a new epoch", 20.0, || {
        let ep = get(&c.hello(actor).ok()?, "ep")?.as_str()?.to_string();
        (ep != a).then_some(ep)
    });
    assert_eq!(c.restarts_seen(actor), seen + 1);
    c.call(actor, publish, one).unwrap();
    assert_eq!(sub.next(Some(Duration::from_secs(10))).unwrap(), Some(StreamEvent::Reset { topic: topic.clone(), old_epoch: a, new_epoch: b.clone() }));
    let m = message(sub.next(Some(Duration::from_secs(10))).unwrap());
    assert_eq!((m.seq, m.epoch), (1, b));
}

#[test]
fn conformance() {
    let Some(dir) = std::env::var_os("MOORAGE_CONFORMANCE_DIR").map(PathBuf::from) else {
        println!("conformance: no tree (MOORAGE_CONFORMANCE_DIR unset): skipped");
        return;
    };
    let cases = common::load("protocol/conformance/cases.json");
    let mut passed = 0;
    for spec in cases["cases"].as_array().unwrap() {
        let name = spec["name"].as_str().unwrap();
        let run: fn(&mut Client, &Spec, &PathBuf) = match spec["kind"].as_str().unwrap() {
            "hello_every_actor" => hello_every_actor,
            "one_op_per_actor" => one_op_per_actor,
            "errors" => errors,
            "retry_same_id" => retry_same_id,
            "gap_repaired" => gap_repaired,
            "loss_reported" => loss_reported,
            "killed_mid_call" => killed_mid_call,
            "restart_epoch" => restart_epoch,
            k => panic!("{name}: unknown kind {k}"),
        };
        let mut c = client(&dir);
        run(&mut c, spec, &dir);
        println!("conformance: {name} ok");
        passed += 1;
    }
    println!("conformance: {passed} of {} cases passed", cases["cases"].as_array().unwrap().len());
}
