//! Latency recording, live: this client's pushes (PROTOCOL.md section 2, the histogram encoding
//! written out there) are taken whole by the real metrics actor, which then shows the client's
//! rows beside the service's. Needs the conformance suite's tree (MOORAGE_CONFORMANCE_DIR).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moorage_client::calls::{CallPlan, PlanSettings};
use moorage_client::codec::{decode, get};
use moorage_client::endpoints::Endpoints;
use moorage_client::envelope::Reply;
use moorage_client::errors::{WireError, KINDS};
use moorage_client::histogram::{counts_index, value_at, Recorder, COUNTS_LEN};
use moorage_client::latency::{split_push, Counts, LatencyBook, PushedOp, Pusher, MAX_PUSH_BUCKETS};
use moorage_client::recovery::Backoff;
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

/// Counts whose histogram is as big as the fixed shape allows: every bucket holding a count
/// that neither zigzag nor deflate can shrink (some 24 KiB encoded).
fn fat(seed: u64) -> Counts {
    let mut times = Recorder::default();
    let mut x = seed;
    for i in 0..COUNTS_LEN {
        x = (x * 1_103_515_245 + 12_345) & 0x7fff_ffff;
        let n = x * 1024 + i as u64 + 1; // < 2^41, so the total stays far below 2^53
        times.counts.insert(value_at(i), n);
        times.total += n;
    }
    Counts { ok: times.total, error: 0, caller: 0, times }
}

fn names(ops: &[PushedOp]) -> Vec<String> {
    ops.iter().map(|op| op.name.clone()).collect()
}

#[test]
fn a_push_of_300_ops_goes_as_bodies_the_metrics_actor_takes_each_op_once_in_order() {
    let ops: Vec<PushedOp> = (0..300u64).map(|i| {
        let mut c = Counts::default();
        for k in 0..=i % 3 {
            if k == 1 { c.error += 1 } else { c.ok += 1 }
            c.times.record(100 + i);
        }
        PushedOp::new(format!("parser/op.{i}"), c)
    }).collect();
    let bodies = split_push(ops);
    // 256: what the metrics actor takes in one push (actors/metrics/push.py)
    assert_eq!(bodies.iter().map(Vec::len).collect::<Vec<_>>(), [256, 44]);
    let flat: Vec<PushedOp> = bodies.into_iter().flatten().collect();
    assert_eq!(names(&flat), (0..300).map(|i| format!("parser/op.{i}")).collect::<Vec<_>>());
    for (i, op) in flat.iter().enumerate() {
        let (ok, error) = [(1, 0), (1, 1), (2, 1)][i % 3];
        assert_eq!((op.counts.ok, op.counts.error, op.counts.times.total), (ok, error, ok + error), "{}", op.name);
        assert_eq!(op.hist, op.counts.times.encode());
    }
}

#[test]
fn a_pushs_histograms_are_cut_at_1_mib_a_body_and_one_bigger_alone_still_goes_alone() {
    let ops: Vec<PushedOp> = (0..100).map(|i| PushedOp::new(format!("parser/op.{i}"), fat(i + 1))).collect();
    let order = names(&ops);
    let bodies = split_push(ops);
    let bytes: Vec<usize> = bodies.iter().map(|b| b.iter().map(|op| op.hist.len()).sum()).collect();
    let buckets: Vec<usize> = bodies.iter().map(|b| b.iter().map(|op| op.buckets).sum()).collect();
    // 1 MiB and 32,768 non-zero counts: what the metrics actor takes in one push
    // (actors/metrics/push.py); of histograms this full, the non-zero counts bind first.
    assert!(bodies.len() > 1 && bytes.iter().all(|&n| n <= 1 << 20) && buckets.iter().all(|&n| n <= 32_768),
            "{bytes:?} {buckets:?}");
    // Full: the next op would not have fitted.
    for i in 1..bodies.len() {
        assert!(buckets[i - 1] + bodies[i][0].buckets > 32_768, "{buckets:?}");
    }
    assert_eq!(names(&bodies.concat()), order);

    // Encodings bigger than any of the fixed shape's, of few buckets: the bytes bind first.
    let big = (0..7).map(|i| PushedOp { hist: vec![b'A'; 400_000], ..PushedOp::new(format!("a/big.{i}"), Counts::default()) });
    assert_eq!(split_push(big.collect()).iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2, 1]);

    let small = |name: &str| PushedOp::new(name.into(), Counts { ok: 1, ..Counts::default() });
    let huge = PushedOp { hist: vec![b'A'; (1 << 20) + 1], ..small("a/huge") };
    let alone = split_push(vec![small("a/x"), huge, small("a/y")]);
    assert_eq!(alone.iter().map(|b| names(b)).collect::<Vec<_>>(), [["a/x"], ["a/huge"], ["a/y"]]);
    assert!(split_push(Vec::new()).is_empty());
}

/// The non-zero counts of an encoded histogram, read back from its bytes (base64, the outer
/// header, zlib, the 40-byte payload header, then zigzag LEB128 varints: a negative one is a
/// run of zeros).
fn decoded_non_zero(hist: &[u8]) -> usize {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextets: Vec<u32> = hist.iter().take_while(|&&c| c != b'=')
        .map(|c| A.iter().position(|a| a == c).expect("base64") as u32).collect();
    let mut outer = Vec::new();
    for chunk in sextets.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, s)| n | s << (18 - 6 * i));
        outer.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    let word = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    assert_eq!(word(&outer, 0), 0x1c84_9314);
    let mut payload = Vec::new();
    flate2::read::ZlibDecoder::new(&outer[8..8 + word(&outer, 4)]).read_to_end(&mut payload).unwrap();
    assert_eq!(word(&payload, 0), 0x1c84_9313);
    let (mut at, end, mut non_zero) = (40, 40 + word(&payload, 4), 0);
    while at < end {
        let (mut z, mut shift) = (0u64, 0);
        loop {
            let byte = payload[at];
            at += 1;
            z |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte < 0x80 {
                break;
            }
        }
        if z % 2 == 0 && z > 0 {
            non_zero += 1; // (an even zigzag is a count; odd, a run of zeros)
        }
    }
    non_zero
}

/// Latencies spread wide: (128 + k % 128) << (k / 128) µs for k in 0..n, n distinct HDR
/// buckets (128 a doubling).
fn wide(k: u64) -> u64 {
    (128 + k % 128) << (k / 128)
}

#[test]
fn an_ops_non_zero_counts_are_its_histograms_buckets_that_hold_a_count_not_its_distinct_values() {
    let mut r = Recorder::default();
    for k in 0..1_500 {
        r.record(wide(k));
        if k >= 128 {
            r.record(wide(k) + 1); // (the same bucket: from 256 up a bucket spans 2^b values)
        }
    }
    assert_eq!(r.counts.len(), 1_500 + 1_372);
    assert_eq!(r.non_zero_counts(), 1_500);
    assert_eq!(decoded_non_zero(&r.encode()), 1_500);
    let full = fat(3).times; // (a count at each index's value: the lowest and highest share theirs)
    assert!(full.non_zero_counts() > 3_000 && full.non_zero_counts() < full.counts.len(), "{}", full.non_zero_counts());
    assert_eq!(decoded_non_zero(&full.encode()), full.non_zero_counts());
    assert_eq!(Recorder::default().non_zero_counts(), 0);
}

/// 40 ops of 1,500 buckets each: 60,000 non-zero counts, in some 150 KiB (within 1 MiB).
fn wide_ops(actor: &str) -> LatencyBook {
    let mut book = LatencyBook::new(true);
    for i in 0..40 {
        for k in 0..1_500 {
            book.record(actor, &format!("op.{i}"), wide(k), true, false);
        }
    }
    book
}

#[test]
fn a_pushs_histograms_are_cut_at_32768_non_zero_counts_a_body() {
    let ops: Vec<PushedOp> = (0..40).map(|i| {
        let mut c = Counts { ok: 1_500, ..Counts::default() };
        for k in 0..1_500 {
            c.times.record(wide(k));
        }
        PushedOp::new(format!("alpha/op.{i}"), c)
    }).collect();
    let bodies = split_push(ops);
    // 32,768: what the metrics actor takes in one push (actors/metrics/push.py)
    assert_eq!(MAX_PUSH_BUCKETS, 32_768);
    let buckets: Vec<usize> = bodies.iter().map(|b| b.iter().map(|op| decoded_non_zero(&op.hist)).sum()).collect();
    assert!(bodies.len() > 1 && buckets.iter().all(|&n| n <= 32_768), "{buckets:?}");
    assert_eq!(bodies.iter().map(Vec::len).collect::<Vec<_>>(), [21, 19]); // full: 22 ops would be 33,000
    let flat = bodies.concat();
    assert_eq!(names(&flat), (0..40).map(|i| format!("alpha/op.{i}")).collect::<Vec<_>>());
    for op in &flat {
        assert_eq!((op.counts.ok, op.counts.error, op.counts.times.total, op.buckets), (1_500, 0, 1_500, 1_500), "{}", op.name);
        assert_eq!(decoded_non_zero(&op.hist), op.buckets, "{}", op.name);
    }

    let small = |name: &str| PushedOp::new(name.into(), Counts { ok: 1, ..Counts::default() });
    let wider = PushedOp { buckets: 32_769, ..small("a/wide") };
    let alone = split_push(vec![small("a/x"), wider, small("a/y")]);
    assert_eq!(alone.iter().map(|b| names(b)).collect::<Vec<_>>(), [["a/x"], ["a/wide"], ["a/y"]]);
}

#[test]
fn histograms_of_60000_non_zero_counts_in_one_interval_reach_the_metrics_actor() {
    let Some(dir) = std::env::var_os("MOORAGE_CONFORMANCE_DIR").map(PathBuf::from) else {
        println!("latency: no tree (MOORAGE_CONFORMANCE_DIR unset): skipped");
        return;
    };
    let name = format!("rust-wide-{}", std::process::id());
    let book = Arc::new(Mutex::new(wide_ops("wide")));
    let endpoints = Endpoints::of(&dir);
    // An interval longer than the test: the one push is the pusher's last, when it is dropped.
    let pusher = Pusher::start(&zmq::Context::new(), &endpoints, &endpoints.metrics_in().unwrap(), book, &name,
                               &format!("{}-wide", std::process::id()), Duration::from_secs(3600)).unwrap();
    drop(pusher);
    let mut asker = Client::new(Options { runtime_dir: Some(dir), timeout: 10.0, ..Options::default() }).unwrap();
    let want: BTreeMap<String, (u64, u64)> = (0..40).map(|i| (format!("wide/op.{i}"), (1_500, 1_500))).collect();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let q = asker.call("metrics", "metrics.query", args([("actor", Value::from(format!("client.{name}")))])).unwrap();
        let rows = get(&q, "ops").and_then(|o| o.as_array()).cloned().unwrap_or_default();
        let got: BTreeMap<String, (u64, u64)> = rows.iter().filter_map(|r| {
            let life = get(r, "lifetime")?;
            Some((get(r, "op")?.as_str()?.to_string(), (get(life, "ok")?.as_u64()?, get(life, "count")?.as_u64()?)))
        }).collect();
        if got.len() >= want.len() || Instant::now() >= end {
            assert_eq!(got, want);
            println!("latency: 40 ops of 1500 buckets pushed and merged");
            return;
        }
    }
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

#[test]
fn a_client_that_called_300_distinct_ops_has_all_300_in_the_metrics_actor() {
    let Some(dir) = std::env::var_os("MOORAGE_CONFORMANCE_DIR").map(PathBuf::from) else {
        println!("latency: no tree (MOORAGE_CONFORMANCE_DIR unset): skipped");
        return;
    };
    let name = format!("rust-300-{}", std::process::id());
    // An interval longer than the test: the one push is the client's last, when it is dropped,
    // so all 300 ops go in it.
    let mut c = Client::new(Options {
        runtime_dir: Some(dir.clone()), timeout: 10.0, metrics_name: Some(name.clone()),
        metrics_interval: Duration::from_secs(3600), ..Options::default()
    }).unwrap();
    // No such ops: each call is answered (an error) and timed all the same.
    for i in 0..300 {
        assert!(c.call("parser", &format!("parse.no_such_op_{i}"), Value::Nil).is_err());
    }
    drop(c);
    let mut asker = Client::new(Options { runtime_dir: Some(dir), timeout: 10.0, ..Options::default() }).unwrap();
    let want: BTreeMap<String, u64> = (0..300).map(|i| (format!("parser/parse.no_such_op_{i}"), 1)).collect();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let q = asker.call("metrics", "metrics.query", args([("actor", Value::from(format!("client.{name}")))])).unwrap();
        let rows = get(&q, "ops").and_then(|o| o.as_array()).cloned().unwrap_or_default();
        // (beside them: the sys.hello that learnt parser's ops)
        let got: BTreeMap<String, u64> = rows.iter().filter_map(|r| {
            let op = get(r, "op")?.as_str()?;
            let error = get(get(r, "lifetime")?, "error")?.as_u64()?;
            op.starts_with("parser/parse.").then(|| (op.to_string(), error))
        }).collect();
        if got == want {
            println!("latency: 300 ops pushed and merged");
            return;
        }
        assert!(Instant::now() < end, "{} of 300 ops showed up", got.len());
    }
}

/// How a call of watcher's fs.stat that ended with `outcome` is recorded: (ok, caller).
fn recorded(outcome: Result<Reply, WireError>) -> (bool, bool) {
    let settings = PlanSettings { timeout: 30.0, attempt_timeout: 1.0, backoff: Backoff::default(), remote: false };
    let mut p = CallPlan::new(1, "4242-1f2e3d4c5b6a", "watcher", "fs.stat", &Value::Nil, vec![0xc0], true, settings, None, &[], 0.0);
    p.done(0.001, outcome);
    let (_, ok, caller) = p.recorded.expect("recorded once it is done");
    (ok, caller)
}

#[test]
fn a_calls_error_counts_as_the_callers_exactly_when_the_error_tables_fault_says_so() {
    for k in KINDS {
        let want = (false, k.fault == "caller");
        assert_eq!(recorded(Err(WireError::of(k.name, ""))), want, "{}", k.name);
        // (as an error reply read from the wire)
        assert_eq!(recorded(Err(WireError::from_wire(&WireError::of(k.name, "").to_wire()))), want, "{}", k.name);
    }
    // A code this client does not know (a newer actor's) counts as the service's.
    let newer = args([("code", Value::from(450)), ("name", Value::from("quota_exceeded")), ("message", Value::from("m"))]);
    assert_eq!(recorded(Err(WireError::from_wire(&newer))), (false, false));
    let reply = Reply { id: Some(1), ok: true, epoch: "e".into(), body: Value::Nil, attachments: vec![] };
    assert_eq!(recorded(Ok(reply)), (true, false));
}

#[test]
fn a_push_carries_caller_for_an_op_some_of_whose_errors_were_the_callers_and_only_then() {
    let dir = std::env::temp_dir().join(format!("mrl-{}-caller", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ctx = zmq::Context::new();
    let pull = ctx.socket(zmq::PULL).unwrap();
    let endpoint = format!("ipc://{}", dir.join("metrics.in").display());
    pull.bind(&endpoint).unwrap();
    pull.set_rcvtimeo(20_000).unwrap();
    let mut book = LatencyBook::new(true);
    for _ in 0..40 {
        book.record("watcher", "fs.stat", 80, false, true);
    }
    book.record("watcher", "fs.stat", 90, false, false); // e.g. a timeout: the service's
    book.record("watcher", "fs.stat", 70, true, false);
    book.record("parser", "sys.ping", 70, true, false);
    book.record("parser", "parse.feed", 70, true, true); // (an ok call is only ok)
    // An interval longer than the test: the one push is the pusher's last, when it is dropped.
    let pusher = Pusher::start(&ctx, &Endpoints::of(&dir), &endpoint, Arc::new(Mutex::new(book)), "editor", "4242-s",
                               Duration::from_secs(3600)).unwrap();
    drop(pusher);
    let frames = pull.recv_multipart(0).expect("the push");
    let body = decode(&frames[2]).unwrap();
    let figures = |op: &str, k: &str| get(get(&body, op).unwrap(), k).and_then(|v| v.as_u64());
    assert_eq!([figures("watcher/fs.stat", "ok"), figures("watcher/fs.stat", "error"), figures("watcher/fs.stat", "caller")],
               [Some(1), Some(41), Some(40)]);
    for op in ["parser/sys.ping", "parser/parse.feed"] {
        assert_eq!(figures(op, "caller"), None, "{op}"); // absent = 0, as an actor pushes it
    }
    drop(pull);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_editors_fs_stat_of_missing_files_counts_as_the_callers_and_raises_no_failure_rate_alert() {
    let Some(dir) = std::env::var_os("MOORAGE_CONFORMANCE_DIR").map(PathBuf::from) else {
        println!("latency: no tree (MOORAGE_CONFORMANCE_DIR unset): skipped");
        return;
    };
    let name = format!("rust-probe-{}", std::process::id());
    // An interval longer than the test: the one push is the client's last, when it is dropped.
    let mut c = Client::new(Options {
        runtime_dir: Some(dir.clone()), timeout: 10.0, metrics_name: Some(name.clone()),
        metrics_interval: Duration::from_secs(3600), ..Options::default()
    }).unwrap();
    // 25: past the alert's 20 requests (the tree's alert_min_samples), every one failed
    for i in 0..25 {
        let path = dir.join(format!("{name}-{i}")).join(".editorconfig");
        let e = c.call("watcher", "fs.stat", args([("path", Value::from(path.to_str().unwrap()))])).unwrap_err();
        assert_eq!(e.name(), "not_found", "{e:?}");
    }
    drop(c);
    let mut asker = Client::new(Options { runtime_dir: Some(dir), timeout: 10.0, ..Options::default() }).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let q = asker.call("metrics", "metrics.query", args([("actor", Value::from(format!("client.{name}")))])).unwrap();
        let rows = get(&q, "ops").and_then(|o| o.as_array()).cloned().unwrap_or_default();
        if let Some(row) = rows.iter().find(|r| get(r, "op").and_then(|x| x.as_str()) == Some("watcher/fs.stat")) {
            let life = |k: &str| get(get(row, "lifetime").unwrap(), k).unwrap().as_u64();
            assert_eq!((life("error"), life("caller_errors")), (Some(25), Some(25)));
            break;
        }
        assert!(Instant::now() < end, "the client's row never showed up: {q:?}");
    }
    // (the push is merged, and its alerts evaluated, before the query that showed it)
    let alerts = asker.call("metrics", "metrics.alerts", Value::Nil).unwrap();
    let recent = get(&alerts, "recent").and_then(|r| r.as_array()).cloned().unwrap_or_default();
    let mine: Vec<&Value> = recent.iter().filter(|e| {
        get(e, "actor").and_then(|a| a.as_str()) == Some(&format!("client.{name}"))
            && get(e, "op").and_then(|o| o.as_str()) == Some("watcher/fs.stat")
    }).collect();
    assert!(mine.is_empty(), "{mine:?}");
    println!("latency: caller errors pushed as the caller's, no alert");
}
