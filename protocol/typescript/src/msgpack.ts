/**
 * A strict msgpack codec for the moorage protocol (PROTOCOL.md section 15).
 *
 * Stock JavaScript codecs accept what the protocol refuses (int map keys, extension types and
 * timestamps, any nesting depth, invalid UTF-8) and round integers past 2^53; this one refuses
 * the former and keeps the latter exact:
 *
 *   msgpack            JavaScript
 *   nil                null
 *   bool               boolean
 *   int                number when within ±(2^53 − 1), else bigint (both encode back as int)
 *   float32/64         number; encode a whole number as float with `new Float64(x)`
 *   str                string (valid UTF-8 only)
 *   bin                Uint8Array (a Buffer encodes as bin too)
 *   array              Array
 *   map (str keys)     plain object (keys in wire order; `__proto__` is an own property)
 *
 * Every length is checked against the bytes left before anything is allocated, nesting is
 * bounded (MAX_DEPTH, the outermost container is depth 1) and walked without recursion past
 * it, and a frame must hold exactly one value.
 */

export const MAX_DEPTH = 32;

/** A float the encoder must write as float64 even when it is a whole number (1.0). */
export class Float64 {
  constructor(readonly value: number) {}
}

/** Why bytes are not a protocol value; `name` is the error a request would be answered with. */
export class CodecError extends Error {
  override readonly name = "CodecError";
  constructor(message: string) {
    super(message);
  }
}

export type Value =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | Float64
  | Value[]
  | { [key: string]: Value | undefined };

const utf8 = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

// --- decoding ------------------------------------------------------------------------------

class Reader {
  pos = 0;
  private dv: DataView | null = null;
  constructor(readonly buf: Uint8Array) {}

  /** Made on first use: most headers and small bodies never need one. */
  get view(): DataView {
    return (this.dv ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength));
  }

  need(n: number): void {
    if (n > this.buf.length - this.pos) {
      throw new CodecError(`truncated: ${n} bytes needed at ${this.pos}, ${this.buf.length - this.pos} left`);
    }
  }
}

function bigToValue(b: bigint): number | bigint {
  return b >= -SAFE && b <= SAFE ? Number(b) : b;
}

type Frame =
  | { kind: "array"; out: Value[]; left: number }
  | { kind: "map"; out: { [key: string]: Value | undefined }; left: number; key: string | undefined };

export interface DecodeOptions {
  /** Deepest nesting accepted (the outermost container is depth 1). */
  maxDepth?: number;
  /** Give floats as Float64 (so 1.0 stays apart from the int 1): headers, exact tests. */
  wrapFloats?: boolean;
}

/** Decode exactly one msgpack value filling `buf`, or throw CodecError. */
export function decode(buf: Uint8Array, options: DecodeOptions = {}): Value {
  const maxDepth = options.maxDepth ?? MAX_DEPTH;
  const wrap = options.wrapFloats === true;
  const r = new Reader(buf);
  const stack: Frame[] = [];
  let result: Value = null;
  let done = false;
  while (!done) {
    let value: Value = null;
    let container: Frame | undefined;
    const b = (r.need(1), buf[r.pos++]);
    if (b <= 0x7f) value = b;
    else if (b >= 0xe0) value = b - 0x100;
    else if ((b & 0xe0) === 0xa0) value = str(r, b & 0x1f);
    else if ((b & 0xf0) === 0x90) container = array(r, b & 0x0f);
    else if ((b & 0xf0) === 0x80) container = map(r, b & 0x0f);
    else {
      switch (b) {
        case 0xc0: value = null; break;
        case 0xc2: value = false; break;
        case 0xc3: value = true; break;
        case 0xc4: value = bin(r, len(r, 1)); break;
        case 0xc5: value = bin(r, len(r, 2)); break;
        case 0xc6: value = bin(r, len(r, 4)); break;
        case 0xca: r.need(4); value = r.view.getFloat32(r.pos); r.pos += 4; if (wrap) value = new Float64(value); break;
        case 0xcb: r.need(8); value = r.view.getFloat64(r.pos); r.pos += 8; if (wrap) value = new Float64(value); break;
        case 0xcc: value = len(r, 1); break;
        case 0xcd: value = len(r, 2); break;
        case 0xce: value = len(r, 4); break;
        case 0xcf: r.need(8); value = bigToValue(r.view.getBigUint64(r.pos)); r.pos += 8; break;
        case 0xd0: r.need(1); value = r.view.getInt8(r.pos); r.pos += 1; break;
        case 0xd1: r.need(2); value = r.view.getInt16(r.pos); r.pos += 2; break;
        case 0xd2: r.need(4); value = r.view.getInt32(r.pos); r.pos += 4; break;
        case 0xd3: r.need(8); value = bigToValue(r.view.getBigInt64(r.pos)); r.pos += 8; break;
        case 0xd9: value = str(r, len(r, 1)); break;
        case 0xda: value = str(r, len(r, 2)); break;
        case 0xdb: value = str(r, len(r, 4)); break;
        case 0xdc: container = array(r, len(r, 2)); break;
        case 0xdd: container = array(r, len(r, 4)); break;
        case 0xde: container = map(r, len(r, 2)); break;
        case 0xdf: container = map(r, len(r, 4)); break;
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
        case 0xc7: case 0xc8: case 0xc9:
          throw new CodecError(b === 0xd6 || b === 0xd7 || b === 0xc7
            ? "msgpack extension types (timestamps included) are not part of the protocol"
            : "msgpack extension types are not part of the protocol");
        default:
          throw new CodecError(`byte 0x${b.toString(16)} is not msgpack`);
      }
    }
    if (container !== undefined) {
      if (stack.length + 1 > maxDepth) throw new CodecError(`nesting deeper than ${maxDepth}`);
      if (container.left > 0) {
        stack.push(container);
        continue;
      }
      value = container.out;
    }
    // Place the finished value in its parent, closing every parent it completes.
    for (;;) {
      const top = stack[stack.length - 1];
      if (top === undefined) {
        result = value!;
        done = true;
        break;
      }
      if (top.kind === "array") {
        top.out.push(value!);
        top.left -= 1;
      } else if (top.key === undefined) {
        if (typeof value! !== "string") {
          throw new CodecError(`map keys must be strings, not ${describe(value!)}`);
        }
        top.key = value as string;
        break;
      } else {
        if (top.key === "__proto__") {
          Object.defineProperty(top.out, top.key, { value, enumerable: true, writable: true, configurable: true });
        } else {
          top.out[top.key] = value!;
        }
        top.key = undefined;
        top.left -= 1;
      }
      if (top.left > 0) break;
      stack.pop();
      value = top.out;
    }
  }
  if (r.pos !== buf.length) throw new CodecError(`${buf.length - r.pos} trailing bytes after the value`);
  return result;
}

function describe(v: Value): string {
  if (v === null) return "nil";
  if (v instanceof Uint8Array) return "bin";
  if (Array.isArray(v)) return "array";
  return typeof v === "object" ? "map" : typeof v === "bigint" ? "int" : typeof v === "number" ? (Number.isInteger(v) ? "int" : "float") : typeof v;
}

function len(r: Reader, size: 1 | 2 | 4): number {
  r.need(size);
  const b = r.buf;
  const p = r.pos;
  const v = size === 1 ? b[p] : size === 2 ? (b[p] << 8) | b[p + 1] : ((b[p] << 24) >>> 0) + ((b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]);
  r.pos += size;
  return v;
}

function str(r: Reader, n: number): string {
  r.need(n);
  const buf = r.buf;
  const start = r.pos;
  r.pos += n;
  if (n <= 32) {
    // Short ASCII (keys, epochs, op names): cheaper by hand than through TextDecoder.
    let ascii = true;
    for (let i = start; i < start + n; i++) {
      if (buf[i] >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) {
      let out = "";
      for (let i = start; i < start + n; i++) out += String.fromCharCode(buf[i]);
      return out;
    }
  }
  const bytes = buf.subarray(start, start + n);
  try {
    return utf8.decode(bytes);
  } catch {
    throw new CodecError("str is not valid UTF-8");
  }
}

function bin(r: Reader, n: number): Uint8Array {
  r.need(n);
  const out = r.buf.slice(r.pos, r.pos + n);
  r.pos += n;
  return out;
}

function array(r: Reader, n: number): Frame {
  // Each element takes at least one byte: a count past the bytes left is a lie.
  r.need(n);
  return { kind: "array", out: [], left: n };
}

function map(r: Reader, n: number): Frame {
  r.need(n * 2);
  return { kind: "map", out: {}, left: n, key: undefined };
}

// --- encoding ------------------------------------------------------------------------------

class Writer {
  buf: Uint8Array = new Uint8Array(256);
  view: DataView = new DataView(this.buf.buffer);
  pos = 0;

  reserve(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  byte(b: number): void {
    this.reserve(1);
    this.buf[this.pos++] = b;
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

/** Encode a value with the smallest encodings (the reference encoder's bytes, section 17). */
export function encode(value: unknown): Uint8Array {
  const w = new Writer();
  write(w, value, 1);
  return w.buf.slice(0, w.pos);
}

function write(w: Writer, v: unknown, depth: number): void {
  if (depth > MAX_DEPTH + 1) throw new CodecError(`nesting deeper than ${MAX_DEPTH}`);
  if (v === null || v === undefined) return w.byte(0xc0);
  switch (typeof v) {
    case "boolean":
      return w.byte(v ? 0xc3 : 0xc2);
    case "number":
      if (Number.isInteger(v) && Number.isSafeInteger(v)) return writeInt(w, BigInt(v), v);
      return writeFloat(w, v);
    case "bigint":
      return writeInt(w, v, undefined);
    case "string":
      return writeStr(w, v);
    case "object":
      break;
    default:
      throw new CodecError(`${typeof v} is not a protocol value`);
  }
  if (v instanceof Float64) return writeFloat(w, v.value);
  if (v instanceof Uint8Array) {
    const n = v.length;
    if (n < 0x100) { w.byte(0xc4); w.byte(n); }
    else if (n < 0x10000) { w.reserve(3); w.buf[w.pos] = 0xc5; w.view.setUint16(w.pos + 1, n); w.pos += 3; }
    else { w.reserve(5); w.buf[w.pos] = 0xc6; w.view.setUint32(w.pos + 1, n); w.pos += 5; }
    return w.bytes(v);
  }
  if (Array.isArray(v)) {
    header(w, v.length, 0x90, 0xdc, 0xdd);
    for (const x of v) write(w, x, depth + 1);
    return;
  }
  if (v instanceof Map) throw new CodecError("a Map is not a protocol value: use a plain object (str keys)");
  const entries = Object.entries(v as object).filter(([, x]) => x !== undefined);
  header(w, entries.length, 0x80, 0xde, 0xdf);
  for (const [k, x] of entries) {
    writeStr(w, k);
    write(w, x, depth + 1);
  }
}

function header(w: Writer, n: number, fix: number, b16: number, b32: number): void {
  if (n < 16) return w.byte(fix | n);
  if (n < 0x10000) { w.reserve(3); w.buf[w.pos] = b16; w.view.setUint16(w.pos + 1, n); w.pos += 3; return; }
  w.reserve(5); w.buf[w.pos] = b32; w.view.setUint32(w.pos + 1, n); w.pos += 5;
}

function writeInt(w: Writer, b: bigint, n: number | undefined): void {
  if (n !== undefined) {
    if (n >= 0) {
      if (n < 0x80) return w.byte(n);
      if (n < 0x100) { w.byte(0xcc); return w.byte(n); }
      if (n < 0x10000) { w.reserve(3); w.buf[w.pos] = 0xcd; w.view.setUint16(w.pos + 1, n); w.pos += 3; return; }
      if (n < 0x100000000) { w.reserve(5); w.buf[w.pos] = 0xce; w.view.setUint32(w.pos + 1, n); w.pos += 5; return; }
    } else {
      if (n >= -32) return w.byte(n & 0xff);
      if (n >= -0x80) { w.byte(0xd0); return w.byte(n & 0xff); }
      if (n >= -0x8000) { w.reserve(3); w.buf[w.pos] = 0xd1; w.view.setInt16(w.pos + 1, n); w.pos += 3; return; }
      if (n >= -0x80000000) { w.reserve(5); w.buf[w.pos] = 0xd2; w.view.setInt32(w.pos + 1, n); w.pos += 5; return; }
    }
  }
  if (b >= 0n) {
    if (b < 0x100000000n) return writeInt(w, b, Number(b));
    if (b > 0xffffffffffffffffn) throw new CodecError(`${b} does not fit uint64`);
    w.reserve(9); w.buf[w.pos] = 0xcf; w.view.setBigUint64(w.pos + 1, b); w.pos += 9;
    return;
  }
  if (b >= -0x80000000n) return writeInt(w, b, Number(b));
  if (b < -0x8000000000000000n) throw new CodecError(`${b} does not fit int64`);
  w.reserve(9); w.buf[w.pos] = 0xd3; w.view.setBigInt64(w.pos + 1, b); w.pos += 9;
}

function writeFloat(w: Writer, f: number): void {
  w.reserve(9);
  w.buf[w.pos] = 0xcb;
  w.view.setFloat64(w.pos + 1, f);
  w.pos += 9;
}

function writeStr(w: Writer, s: string): void {
  const bytes = utf8Encoder.encode(s);
  const n = bytes.length;
  if (n < 32) w.byte(0xa0 | n);
  else if (n < 0x100) { w.byte(0xd9); w.byte(n); }
  else if (n < 0x10000) { w.reserve(3); w.buf[w.pos] = 0xda; w.view.setUint16(w.pos + 1, n); w.pos += 3; }
  else { w.reserve(5); w.buf[w.pos] = 0xdb; w.view.setUint32(w.pos + 1, n); w.pos += 5; }
  w.bytes(bytes);
}
