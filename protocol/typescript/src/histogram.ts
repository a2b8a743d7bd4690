/**
 * Latency histograms in the one shape every moorage histogram has (1 µs .. 1 h, 2 significant
 * digits), encoded as PROTOCOL.md section 2 spells out (HdrHistogram's V2 compressed form), so
 * the metrics actor merges a client's pushes with the actors' own.
 */
import { deflateSync } from "node:zlib";

export const LOWEST_US = 1;
export const HIGHEST_US = 3_600_000_000;
export const DIGITS = 2;
const SUB_BUCKET_HALF = 128;
export const COUNTS_LEN = 26 * SUB_BUCKET_HALF; // 25 buckets + 1, times 128

/** The counts-array index of a value in microseconds (section 2, `index(v)`). */
export function countsIndex(micros: number): number {
  const v = Math.min(Math.max(1, Math.trunc(micros)), HIGHEST_US);
  // b = 56 - clz64(v | 255) = (the bit width of v | 255) - 8.
  const width = v < 256 ? 8 : v.toString(2).length;
  const b = width - 8;
  const s = Math.floor(v / 2 ** b);
  return (b + 1) * SUB_BUCKET_HALF + s - SUB_BUCKET_HALF;
}

/** The highest value a counts index stands for (what a decoder reports for it). */
export function valueAt(index: number): number {
  let b = Math.floor(index / SUB_BUCKET_HALF) - 1;
  let s = (index % SUB_BUCKET_HALF) + SUB_BUCKET_HALF;
  if (b < 0) {
    s -= SUB_BUCKET_HALF;
    b = 0;
  }
  return (s + 1) * 2 ** b - 1;
}

/** Counts of microsecond values; folded into the HDR shape when encoded or summarised. */
export class Recorder {
  readonly counts = new Map<number, number>();
  total = 0;

  record(micros: number): void {
    const v = micros > 0 ? Math.trunc(micros) : 1;
    this.counts.set(v, (this.counts.get(v) ?? 0) + 1);
    this.total += 1;
    if (this.counts.size > 4096) this.fold();
  }

  /** Fold to HDR precision, so memory stays bounded (percentiles do not change). */
  fold(): void {
    const folded = new Map<number, number>();
    for (const [v, n] of this.counts) {
      const k = valueAt(countsIndex(v));
      folded.set(k, (folded.get(k) ?? 0) + n);
    }
    this.counts.clear();
    for (const [k, n] of folded) this.counts.set(k, n);
  }

  add(other: Recorder): void {
    for (const [v, n] of other.counts) this.counts.set(v, (this.counts.get(v) ?? 0) + n);
    this.total += other.total;
  }

  /** p50, p90, p99, p99.9 and max in microseconds, at HDR precision. */
  summary(): { count: number; p50: number; p90: number; p99: number; p999: number; max: number } {
    const sorted = [...this.counts.entries()].sort((a, b) => a[0] - b[0]);
    const at = (q: number): number => {
      if (this.total === 0) return 0;
      const rank = Math.max(1, Math.ceil((q / 100) * this.total));
      let seen = 0;
      for (const [v, n] of sorted) {
        seen += n;
        if (seen >= rank) return valueAt(countsIndex(v));
      }
      return valueAt(countsIndex(sorted[sorted.length - 1][0]));
    };
    return { count: this.total, p50: at(50), p90: at(90), p99: at(99), p999: at(99.9), max: at(100) };
  }

  /** The non-zero counts of the encoded histogram: its HDR buckets that hold a count (the
   * recorded values are exact until folded, so several of them may share one bucket). What
   * the metrics actor bounds a push by (limits.MAX_PUSH_BUCKETS). */
  nonZeroCounts(): number {
    const buckets = new Set<number>();
    for (const [v, n] of this.counts) if (n > 0) buckets.add(countsIndex(v));
    return buckets.size;
  }

  /** The base64 text (as bytes) of the HdrHistogram V2 compressed encoding. */
  encode(): Uint8Array {
    const counts = new Float64Array(COUNTS_LEN);
    let top = -1;
    for (const [v, n] of this.counts) {
      const i = countsIndex(v);
      counts[i] += n;
      if (i > top) top = i;
    }
    const varints: number[] = [];
    for (let i = 0; i <= top; ) {
      if (counts[i] === 0) {
        let run = 0;
        while (i <= top && counts[i] === 0) {
          run += 1;
          i += 1;
        }
        zigzag(varints, run > 1 ? -run : 0);
      } else {
        zigzag(varints, counts[i]);
        i += 1;
      }
    }
    const payload = Buffer.alloc(40 + varints.length);
    payload.writeUInt32BE(0x1c849313, 0);
    payload.writeUInt32BE(varints.length, 4);
    payload.writeUInt32BE(0, 8);
    payload.writeUInt32BE(DIGITS, 12);
    payload.writeBigUInt64BE(BigInt(LOWEST_US), 16);
    payload.writeBigUInt64BE(BigInt(HIGHEST_US), 24);
    payload.writeDoubleBE(1.0, 32);
    Buffer.from(varints).copy(payload, 40);
    const deflated = deflateSync(payload);
    const outer = Buffer.alloc(8 + deflated.length);
    outer.writeUInt32BE(0x1c849314, 0);
    outer.writeUInt32BE(deflated.length, 4);
    deflated.copy(outer, 8);
    return new Uint8Array(Buffer.from(outer.toString("base64"), "latin1"));
  }
}

function zigzag(out: number[], n: number): void {
  // ZigZag then LEB128; counts stay far below 2^53, so plain number arithmetic is exact.
  let z = n >= 0 ? n * 2 : -n * 2 - 1;
  do {
    let byte = z % 128;
    z = Math.floor(z / 128);
    if (z > 0) byte |= 0x80;
    out.push(byte);
  } while (z > 0);
}
