//! Decoding limits (PROTOCOL.md section 15).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
pub const MAX_HEADER_SIZE: usize = 4096;
pub const MAX_BODY_SIZE: usize = 16 * 1024 * 1024;
pub const MAX_ATTACHMENTS: usize = 16;
pub const MAX_OP_LEN: usize = 64;
pub const MAX_TOPIC_LEN: usize = 256; // a subscription's topic, in bytes: longer ones close the connection
pub const MAX_SID_LEN: usize = 128;
pub const MAX_ID: u64 = (1 << 53) - 1;
pub const HWM: i32 = 100_000;
/// A subscription's queue (its SUB's RCVHWM), in messages: section 15.
pub const STREAM_HWM: i32 = 1_000;
/// A metric push (`metrics.in`) past any of these is refused whole: a pusher splits what it has.
pub const MAX_OPS_PER_PUSH: usize = 256;
pub const MAX_PUSH_HIST_BYTES: usize = 1 << 20; // all encoded histograms of one push
pub const MAX_PUSH_BUCKETS: usize = 32_768; // non-zero counts in all the histograms of one push
/// Over tcp a socket's MAXMSGSIZE is this much over the limit: CURVE wraps each message in a
/// MESSAGE command (33 bytes more) and its INITIATE is some 300 bytes (section 2).
pub const CURVE_ROOM: i64 = 512;
