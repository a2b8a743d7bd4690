//! moorage-client: a blocking client of a moorage process tree (protocol/PROTOCOL.md).
//!
//! Layout: `codec` (the strict msgpack reader and the writer), `envelope` (frames), `errors`
//! and `recovery` (the taxonomy, the matrix, back-off, breaker), `calls` (every decision of a
//! call) and `known_ops` (the ops the schema declares idempotent, generated), `streams` (every
//! decision of a subscription), `histogram` and `latency` (latency recording and pushing),
//! `endpoints` (the runtime directory), `client` (sockets and waiting), `lifecycle` (holding a
//! tree beside an editor: `adopt`).

pub mod calls;
pub mod client;
pub mod codec;
pub mod endpoints;
pub mod envelope;
pub mod errors;
pub mod histogram;
pub mod known_ops;
pub mod latency;
pub mod lifecycle;
pub mod limits;
pub mod recovery;
pub mod streams;

pub use client::{CallOptions, Client, Options, Remote, SubscribeOptions, Subscription};
pub use endpoints::CurveKeys;
pub use envelope::{Reply, StreamMessage};
pub use errors::{Error, WireError};
pub use lifecycle::adopt;
pub use recovery::BreakerState;
pub use rmpv::Value;
pub use streams::StreamEvent;

/// Op arguments from `(name, value)` pairs: `args([("path", Value::from("/tmp"))])`.
pub fn args<I, K>(pairs: I) -> Value
where
    I: IntoIterator<Item = (K, Value)>,
    K: Into<String>,
{
    codec::map_of(pairs)
}
