/**
 * JSON as the vector files mean it (PROTOCOL.md section 17): a number with a fraction or
 * exponent is a float64 (kept as Float64, so 1.0 is not the int 1), an integer past ±(2^53 − 1)
 * a bigint, {"$bin": hex} a bin. JSON.parse cannot tell any of these apart.
 */
import { Float64, type Value } from "../src/msgpack.js";

export function parseVectorJson(text: string): unknown {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const value = (): unknown => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const out: Record<string, unknown> = {};
      ws();
      if (text[i] === "}") {
        i++;
        return out;
      }
      for (;;) {
        ws();
        const k = value() as string;
        ws();
        i++; // :
        Object.defineProperty(out, k, { value: value(), enumerable: true, writable: true, configurable: true });
        ws();
        if (text[i++] === "}") return out;
      }
    }
    if (c === "[") {
      i++;
      const out: unknown[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return out;
      }
      for (;;) {
        out.push(value());
        ws();
        if (text[i++] === "]") return out;
      }
    }
    if (c === '"') {
      const start = i;
      i++;
      while (text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
      i++;
      return JSON.parse(text.slice(start, i));
    }
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 64));
    if (m) {
      i += m[0].length;
      if (m[1] !== undefined || m[2] !== undefined) return new Float64(Number(m[0]));
      const b = BigInt(m[0]);
      return b >= -BigInt(Number.MAX_SAFE_INTEGER) && b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b;
    }
    for (const [word, v] of [["true", true], ["false", false], ["null", null]] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    throw new Error(`bad JSON at ${i}`);
  };
  const out = value();
  return out;
}

/** A vector's JSON value as a wire value: {"$bin": hex} -> Uint8Array. */
export function toWire(v: unknown): Value {
  if (Array.isArray(v)) return v.map(toWire);
  if (v !== null && typeof v === "object" && !(v instanceof Float64)) {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$bin") return Uint8Array.from(Buffer.from((v as { $bin: string }).$bin, "hex"));
    const out: Record<string, Value> = {};
    for (const k of keys) Object.defineProperty(out, k, { value: toWire((v as Record<string, unknown>)[k]), enumerable: true, writable: true, configurable: true });
    return out;
  }
  return v as Value;
}

export const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
export const unhex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, "hex"));
