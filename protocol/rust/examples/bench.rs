//! perf/clients.py's Rust side: sys.ping through this client beside a raw zmq DEALER sending
//! the same frames to a bare echo, in one process, alternating, so both see the same machine.
//! Prints one JSON line: {client: {p50, p99, rate}, raw: {p50, p99, rate}, actor_direct: {p50, p99,
//! raw_p50}} (µs, /s).
//!
//!   cargo run --release --example bench -- <runtime dir> <actor> <raw echo endpoint> <n>

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use moorage_client::envelope::encode_request;
use moorage_client::{Client, Options, Value};

const WINDOW: usize = 256;

fn pct(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let k = ((p / 100.0 * samples.len() as f64 + 0.5).round() as usize).clamp(1, samples.len()) - 1;
    samples[k]
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (dir, actor, endpoint, n) = (PathBuf::from(&a[0]), a[1].as_str(), a[2].as_str(), a[3].parse::<usize>().unwrap());
    let ctx = zmq::Context::new();
    let raw = ctx.socket(zmq::DEALER).unwrap();
    raw.set_linger(0).unwrap();
    raw.connect(endpoint).unwrap();
    let frames = encode_request(1, "raw-echo-0123456789", "sys.ping", &[0xc0], Some(0), &[]);
    let raw_trip = || {
        raw.send_multipart(frames.iter(), 0).unwrap();
        raw.recv_multipart(0).unwrap();
    };
    // The frames a client sends (a new id and a deadline each) straight to the actor.
    let bare = ctx.socket(zmq::DEALER).unwrap();
    bare.set_linger(0).unwrap();
    bare.connect(&format!("ipc://{}/{actor}.rpc", dir.display())).unwrap();
    let mut bare_id = 0u64;
    let mut bare_frames = || {
        bare_id += 1;
        let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64 + 10_000;
        encode_request(bare_id, "bare-dealer-0123456789", "sys.ping", &[0xc0], Some(deadline), &[])
    };
    let bare_trip = |frames: Vec<Vec<u8>>| {
        bare.send_multipart(frames.iter(), 0).unwrap();
        bare.recv_multipart(0).unwrap();
    };
    let mut client = Client::new(Options { runtime_dir: Some(dir), timeout: 10.0, ..Options::default() }).unwrap();
    for _ in 0..2000 {
        raw_trip();
        client.call(actor, "sys.ping", Value::Nil).unwrap();
        bare_trip(bare_frames());
    }
    let (mut ours, mut limit, mut direct) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t0 = Instant::now();
        raw_trip();
        limit.push(t0.elapsed().as_secs_f64() * 1e6);
        let t0 = Instant::now();
        client.call(actor, "sys.ping", Value::Nil).unwrap();
        ours.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    // The actor's own share, in a block of its own (a third round trip between the two
    // compared slows whichever comes after it), alternated with the raw echo as the client was.
    let mut limit_beside = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        raw_trip();
        limit_beside.push(t0.elapsed().as_secs_f64() * 1e6);
        let frames = bare_frames(); // (made before the clock: the echo's frames are made once)
        let t0 = Instant::now();
        bare_trip(frames);
        direct.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let (mut rate_raw, mut rate_client) = (0f64, 0f64);
    for _ in 0..3 {
        let count = n * 2;
        let t0 = Instant::now();
        let (mut sent, mut got) = (0, 0);
        while got < count {
            while sent < count && sent - got < WINDOW {
                raw.send_multipart(frames.iter(), 0).unwrap();
                sent += 1;
            }
            raw.recv_multipart(0).unwrap();
            got += 1;
            while got < sent && raw.recv_multipart(zmq::DONTWAIT).is_ok() {
                got += 1;
            }
        }
        rate_raw = rate_raw.max(count as f64 / t0.elapsed().as_secs_f64());
        let calls: Vec<(String, Value)> = (0..count).map(|_| ("sys.ping".to_string(), Value::Nil)).collect();
        let t0 = Instant::now();
        let out = client.pipeline(actor, calls, WINDOW).unwrap();
        rate_client = rate_client.max(count as f64 / t0.elapsed().as_secs_f64());
        assert!(out.iter().all(Result::is_ok));
    }
    println!(
        "{{\"client\": {{\"p50\": {:.1}, \"p99\": {:.1}, \"rate\": {:.0}}}, \"raw\": {{\"p50\": {:.1}, \"p99\": {:.1}, \"rate\": {:.0}}}, \"actor_direct\": {{\"p50\": {:.1}, \"p99\": {:.1}, \"raw_p50\": {:.1}}}}}",
        pct(&mut ours, 50.0), pct(&mut ours, 99.0), rate_client, pct(&mut limit, 50.0), pct(&mut limit, 99.0), rate_raw,
        pct(&mut direct, 50.0), pct(&mut direct, 99.0), pct(&mut limit_beside, 50.0)
    );
}
