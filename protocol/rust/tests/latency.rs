//! Latency recording, live: this client's pushes (PROTOCOL.md section 2, the histogram encoding
//! written out there) are taken whole by the real metrics actor, which then shows the client's
//! rows beside the service's. Needs the conformance suite's tree (MOORAGE_CONFORMANCE_DIR).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use moorage_client::codec::get;
use moorage_client::histogram::{counts_index, value_at, Recorder};
use moorage_client::{args, Client, Options, Value};

#[test]
fn a_values_bucket_stands_for_the_values_of_its_index() {
    for v in [1u64, 2, 127, 255, 256, 257, 1000, 65_535, 1_000_000, 3_600_000_000] {
        let i = counts_index(v);
        assert!(value_at(i) >= v && (i == 0 || value_at(i - 1) < v), "v={v}");
    }
    assert_eq!((counts_index(1000), value_at(counts_index(1000))), (506, 1003)); // as Python's hdrh
    let mut r = Recorder::default();
    for i in 1..=100 {
        r.record(i * 10);
    }
    assert_eq!((r.summary().p50, r.summary().max), (501, 1003));
}

#[test]
fn a_pushing_client_shows_up_in_the_metrics_actor() {
    let Some(dir) = std::env::var_os("MOORAGE_CONFORMANCE_DIR").map(PathBuf::from) else {
        println!("latency: no tree (MOORAGE_CONFORMANCE_DIR unset): skipped");
        return;
    };
    let name = format!("rust-{}", std::process::id());
    let mut c = Client::new(Options {
        runtime_dir: Some(dir), timeout: 10.0, metrics_name: Some(name.clone()),
        metrics_interval: Duration::from_millis(50), ..Options::default()
    }).unwrap();
    for _ in 0..25 {
        c.call("parser", "sys.ping", Value::Nil).unwrap();
    }
    assert!(c.call("parser", "parse.no_such_op", Value::Nil).is_err());
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let q = c.call("metrics", "metrics.query", args([("actor", Value::from(format!("client.{name}")))])).unwrap();
        let rows = get(&q, "ops").and_then(|o| o.as_array()).cloned().unwrap_or_default();
        let row = |op: &str| rows.iter().find(|r| get(r, "op").and_then(|x| x.as_str()) == Some(op)).cloned();
        if let (Some(ping), Some(bad)) = (row("parser/sys.ping"), row("parser/parse.no_such_op")) {
            let life = |r: &Value, k: &str| get(get(r, "lifetime").unwrap(), k).unwrap().as_u64();
            assert_eq!(life(&ping, "ok"), Some(25));
            assert_eq!(life(&bad, "error"), Some(1));
            let mine = c.latency_report().into_iter().find(|r| r.op == "sys.ping").unwrap();
            assert_eq!(life(&ping, "p50"), Some(mine.summary.p50));
            println!("latency: pushed rows merged");
            return;
        }
        assert!(Instant::now() < end, "the client's rows never showed up: {q:?}");
    }
}
