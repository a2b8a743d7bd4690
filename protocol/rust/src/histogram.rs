//! Latency histograms in the one shape every moorage histogram has (1 µs .. 1 h, 2
//! significant digits), encoded as PROTOCOL.md section 2 spells out (HdrHistogram's V2
//! compressed form), so the metrics actor merges a client's pushes with the actors' own.

use std::collections::BTreeMap;
use std::io::Write;

use flate2::write::ZlibEncoder;
use flate2::Compression;

pub const LOWEST_US: u64 = 1;
pub const HIGHEST_US: u64 = 3_600_000_000;
pub const DIGITS: u32 = 2;
const HALF: u64 = 128;
pub const COUNTS_LEN: usize = 26 * HALF as usize;

/// The counts-array index of a value in microseconds (section 2, `index(v)`).
pub fn counts_index(micros: u64) -> usize {
    let v = micros.clamp(LOWEST_US, HIGHEST_US);
    let b = 56 - (v | 255).leading_zeros() as u64;
    let s = v >> b;
    ((b + 1) * HALF + s - HALF) as usize
}

/// The highest value an index stands for (what a decoder reports for it).
pub fn value_at(index: usize) -> u64 {
    let index = index as u64;
    let (mut b, mut s) = ((index / HALF) as i64 - 1, index % HALF + HALF);
    if b < 0 {
        s -= HALF;
        b = 0;
    }
    ((s + 1) << b) - 1
}

/// Counts of microsecond values, folded into the HDR shape when encoded or summarised.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    pub counts: BTreeMap<u64, u64>,
    pub total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Recorder {
    pub fn record(&mut self, micros: u64) {
        *self.counts.entry(micros.max(1)).or_insert(0) += 1;
        self.total += 1;
        if self.counts.len() > 4096 {
            let folded: Vec<(u64, u64)> = self.counts.iter().map(|(v, n)| (value_at(counts_index(*v)), *n)).collect();
            self.counts.clear();
            for (v, n) in folded {
                *self.counts.entry(v).or_insert(0) += n;
            }
        }
    }

    pub fn add(&mut self, other: &Recorder) {
        for (v, n) in &other.counts {
            *self.counts.entry(*v).or_insert(0) += n;
        }
        self.total += other.total;
    }

    pub fn summary(&self) -> Summary {
        let at = |q: f64| -> u64 {
            if self.total == 0 {
                return 0;
            }
            let rank = ((q / 100.0) * self.total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (v, n) in &self.counts {
                seen += n;
                if seen >= rank {
                    return value_at(counts_index(*v));
                }
            }
            value_at(counts_index(*self.counts.keys().last().unwrap()))
        };
        Summary { count: self.total, p50: at(50.0), p90: at(90.0), p99: at(99.0), p999: at(99.9), max: at(100.0) }
    }

    /// The non-zero counts of the encoded histogram: its HDR buckets that hold a count (the
    /// recorded values are exact until folded, so several of them may share one bucket). What
    /// the metrics actor bounds a push by (`limits::MAX_PUSH_BUCKETS`).
    pub fn non_zero_counts(&self) -> usize {
        // (values in order, so their indexes are too: a new index is a new bucket)
        let mut last = None;
        let mut buckets = 0;
        for (v, n) in &self.counts {
            let i = counts_index(*v);
            if *n > 0 && last != Some(i) {
                buckets += 1;
                last = Some(i);
            }
        }
        buckets
    }

    /// The base64 text (as bytes) of the HdrHistogram V2 compressed encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut counts = vec![0u64; COUNTS_LEN];
        let mut top: Option<usize> = None;
        for (v, n) in &self.counts {
            let i = counts_index(*v);
            counts[i] += n;
            top = Some(top.map_or(i, |t| t.max(i)));
        }
        let mut varints = Vec::new();
        if let Some(top) = top {
            let mut i = 0;
            while i <= top {
                if counts[i] == 0 {
                    let start = i;
                    while i <= top && counts[i] == 0 {
                        i += 1;
                    }
                    let run = (i - start) as i64;
                    zigzag(&mut varints, if run > 1 { -run } else { 0 });
                } else {
                    zigzag(&mut varints, counts[i] as i64);
                    i += 1;
                }
            }
        }
        let mut payload = Vec::with_capacity(40 + varints.len());
        payload.extend_from_slice(&0x1c84_9313u32.to_be_bytes());
        payload.extend_from_slice(&(varints.len() as u32).to_be_bytes());
        payload.extend_from_slice(&0u32.to_be_bytes());
        payload.extend_from_slice(&DIGITS.to_be_bytes());
        payload.extend_from_slice(&LOWEST_US.to_be_bytes());
        payload.extend_from_slice(&HIGHEST_US.to_be_bytes());
        payload.extend_from_slice(&1.0f64.to_be_bytes());
        payload.extend_from_slice(&varints);
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&payload).expect("deflating into a Vec cannot fail");
        let deflated = z.finish().expect("deflating into a Vec cannot fail");
        let mut outer = Vec::with_capacity(8 + deflated.len());
        outer.extend_from_slice(&0x1c84_9314u32.to_be_bytes());
        outer.extend_from_slice(&(deflated.len() as u32).to_be_bytes());
        outer.extend_from_slice(&deflated);
        base64(&outer).into_bytes()
    }
}

fn zigzag(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        s.push(A[(n >> 18) as usize & 63] as char);
        s.push(A[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        s.push(if c.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    s
}
