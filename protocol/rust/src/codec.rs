//! A strict msgpack reader into `rmpv::Value`, and the writer (PROTOCOL.md section 15).
//!
//! rmpv's own reader takes extension types and timestamps, invalid UTF-8 (kept as bytes) and
//! non-str map keys, and trusts length prefixes for its allocations; this one refuses all of
//! those, bounds every length by the bytes that remain, walks without recursion and stops
//! past `MAX_DEPTH`. Integers keep their full 64-bit range (`rmpv::Integer`).

use rmpv::{Utf8String, Value};

/// Deepest nesting of arrays and maps (the outermost container is depth 1).
pub const MAX_DEPTH: usize = 32;

/// Why bytes are not a protocol value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

fn err<T>(msg: impl Into<String>) -> Result<T, CodecError> {
    Err(CodecError(msg.into()))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.buf.len() - self.pos {
            return err(format!("truncated: {} bytes needed at {}, {} left", n, self.pos, self.buf.len() - self.pos));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn need(&self, n: usize) -> Result<(), CodecError> {
        if n > self.buf.len() - self.pos {
            return err(format!("a length of {} at {} runs past the end", n, self.pos));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn be<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn len(&mut self, size: usize) -> Result<usize, CodecError> {
        Ok(match size {
            1 => self.u8()? as usize,
            2 => u16::from_be_bytes(self.be()?) as usize,
            _ => u32::from_be_bytes(self.be()?) as usize,
        })
    }
    fn str(&mut self, n: usize) -> Result<Value, CodecError> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::String(Utf8String::from(s))),
            Err(_) => err("str is not valid UTF-8"),
        }
    }
}

enum Open {
    Array(Vec<Value>, usize),
    Map(Vec<(Value, Value)>, usize, Option<Value>),
}

/// Decode exactly one value filling `buf`.
pub fn decode(buf: &[u8]) -> Result<Value, CodecError> {
    decode_with_depth(buf, MAX_DEPTH)
}

pub fn decode_with_depth(buf: &[u8], max_depth: usize) -> Result<Value, CodecError> {
    let mut r = Reader { buf, pos: 0 };
    let mut stack: Vec<Open> = Vec::new();
    loop {
        let b = r.u8()?;
        let mut open: Option<Open> = None;
        let mut value = match b {
            0x00..=0x7f => Value::from(b),
            0xe0..=0xff => Value::from(b as i8),
            0xa0..=0xbf => r.str((b & 0x1f) as usize)?,
            0x90..=0x9f => {
                open = Some(array(&r, (b & 0x0f) as usize)?);
                Value::Nil
            }
            0x80..=0x8f => {
                open = Some(map(&r, (b & 0x0f) as usize)?);
                Value::Nil
            }
            0xc0 => Value::Nil,
            0xc2 => Value::Boolean(false),
            0xc3 => Value::Boolean(true),
            0xc4 | 0xc5 | 0xc6 => {
                let n = r.len(1 << (b - 0xc4))?;
                Value::Binary(r.take(n)?.to_vec())
            }
            0xca => Value::F32(f32::from_be_bytes(r.be()?)),
            0xcb => Value::F64(f64::from_be_bytes(r.be()?)),
            0xcc => Value::from(r.u8()?),
            0xcd => Value::from(u16::from_be_bytes(r.be()?)),
            0xce => Value::from(u32::from_be_bytes(r.be()?)),
            0xcf => Value::from(u64::from_be_bytes(r.be()?)),
            0xd0 => Value::from(r.u8()? as i8),
            0xd1 => Value::from(i16::from_be_bytes(r.be()?)),
            0xd2 => Value::from(i32::from_be_bytes(r.be()?)),
            0xd3 => Value::from(i64::from_be_bytes(r.be()?)),
            0xd9 | 0xda | 0xdb => {
                let n = r.len(1 << (b - 0xd9))?;
                r.str(n)?
            }
            0xdc | 0xdd => {
                let n = r.len(if b == 0xdc { 2 } else { 4 })?;
                open = Some(array(&r, n)?);
                Value::Nil
            }
            0xde | 0xdf => {
                let n = r.len(if b == 0xde { 2 } else { 4 })?;
                open = Some(map(&r, n)?);
                Value::Nil
            }
            0xd4..=0xd8 | 0xc7..=0xc9 => return err("msgpack extension types (timestamps included) are not part of the protocol"),
            _ => return err(format!("byte 0x{:02x} is not msgpack", b)),
        };
        if let Some(o) = open {
            if stack.len() + 1 > max_depth {
                return err(format!("nesting deeper than {}", max_depth));
            }
            let empty = matches!(&o, Open::Array(_, 0) | Open::Map(_, 0, _));
            if !empty {
                stack.push(o);
                continue;
            }
            value = close(o);
        }
        // Place the finished value, closing every container it completes.
        loop {
            match stack.last_mut() {
                None => {
                    if r.pos != buf.len() {
                        return err(format!("{} trailing bytes after the value", buf.len() - r.pos));
                    }
                    return Ok(value);
                }
                Some(Open::Array(items, left)) => {
                    items.push(value);
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                }
                Some(Open::Map(pairs, left, key)) => match key.take() {
                    None => {
                        if !value.is_str() {
                            return err("map keys must be strings");
                        }
                        *key = Some(value);
                        break;
                    }
                    Some(k) => {
                        pairs.push((k, value));
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                    }
                },
            }
            value = close(stack.pop().unwrap());
        }
    }
}

fn array(r: &Reader, n: usize) -> Result<Open, CodecError> {
    r.need(n)?; // each element takes at least a byte: a count past the end is a lie
    Ok(Open::Array(Vec::with_capacity(n.min(1024)), n))
}

fn map(r: &Reader, n: usize) -> Result<Open, CodecError> {
    r.need(n.saturating_mul(2))?;
    Ok(Open::Map(Vec::with_capacity(n.min(1024)), n, None))
}

fn close(o: Open) -> Value {
    match o {
        Open::Array(items, _) => Value::Array(items),
        Open::Map(pairs, _, _) => Value::Map(pairs),
    }
}

/// Encode with the smallest encodings (the reference encoder's bytes, section 17).
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    rmpv::encode::write_value(&mut out, v).expect("writing to a Vec cannot fail");
    out
}

/// A map from `(key, value)` pairs, keys in the given order.
pub fn map_of<I, K>(pairs: I) -> Value
where
    I: IntoIterator<Item = (K, Value)>,
    K: Into<String>,
{
    Value::Map(pairs.into_iter().map(|(k, v)| (Value::from(k.into()), v)).collect())
}

/// The value of `key` in a map, if `v` is a map holding it.
pub fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}
