/**
 * moorage-client: a client of a moorage process tree (protocol/PROTOCOL.md), for Node 18+.
 *
 * Layout: msgpack.ts (the strict codec), envelope.ts (frames), errors.ts and recovery.ts (the
 * taxonomy, the matrix, back-off, breaker), calls.ts (every decision of a call) and knownOps.ts
 * (the ops the schema declares idempotent, generated), streams.ts (every decision of a
 * subscription), histogram.ts and latency.ts (latency recording and pushing), endpoints.ts
 * (the runtime directory), client.ts (sockets and waiting), lifecycle.ts (holding a tree beside
 * an editor: adopt).
 */
export { Client, Subscription, type ClientOptions, type SubscribeOptions } from "./client.js";
export { ActorLink, CallPlan, knownIdempotent, type CallOptions, type Verdict } from "./calls.js";
export { SCHEMA_IDEMPOTENT } from "./knownOps.js";
export * as envelope from "./envelope.js";
export type { Reply, Request, StreamMessage } from "./envelope.js";
export { DecodeError, MoorageError, type WireError, KINDS, BY_CODE, fromWire, wireError, unauthorized } from "./errors.js";
export { CodecError, Float64, decode, encode, type Value } from "./msgpack.js";
export { Backoff, CircuitBreaker, MATRIX, maxRetriesFor, type BreakerState } from "./recovery.js";
export { StreamTracker, type ByteGap, type BytesLost, type Loss, type Message, type Reset, type StreamEvent, type SubscriptionEvent } from "./streams.js";
export { Recorder } from "./histogram.js";
export { runtimeDir, endpointsOf, remoteEndpointsOf, clientKeys, keysDir, type CurveKeys } from "./endpoints.js";
export { adopt, type Adopted, type Lifecycle } from "./lifecycle.js";
