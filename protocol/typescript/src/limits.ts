/** Decoding limits (PROTOCOL.md section 15). */
export const MAX_MESSAGE_SIZE = 64 * 1024 * 1024;
export const MAX_HEADER_SIZE = 4096;
export const MAX_BODY_SIZE = 16 * 1024 * 1024;
export const MAX_ATTACHMENTS = 16;
export const MAX_DEPTH = 32;
export const MAX_OP_LEN = 64;
export const MAX_TOPIC_LEN = 256; // a subscription's topic, in bytes: longer ones close the connection
export const MAX_SID_LEN = 128;
export const MAX_ID = Number.MAX_SAFE_INTEGER;
export const HWM = 100_000;
/** A subscription's queue (its SUB's receive high-water mark), in messages: section 15. */
export const STREAM_HWM = 1_000;
/** A metric push (`metrics.in`) past any of these is refused whole: a pusher splits what it has. */
export const MAX_OPS_PER_PUSH = 256;
export const MAX_PUSH_HIST_BYTES = 1 << 20; // all encoded histograms of one push
export const MAX_PUSH_BUCKETS = 32_768; // non-zero counts in all the histograms of one push
/** Over tcp a socket's maxMessageSize is this much over the limit: CURVE wraps each message in
 * a MESSAGE command (33 bytes more) and its INITIATE is some 300 bytes (section 2). */
export const CURVE_ROOM = 512;
