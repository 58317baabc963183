//! The receipt domain: spec rules as a pure engine (`../shared/spec/receipts.md`).
//!
//! - [`event`]: decoded inputs and the `receipt_complete` output; [`id`]: their ids.
//! - [`engine`]: the rules, with an in-memory room cache over a [`KvStore`](crate::store::KvStore).
//! - `room`: one room's in-memory state and its stored keys.
//! - [`persist`]: key layout and versioned `bincode` values.
//! - [`view`]: the query views (readers of a message, unread counts, frontier).
//! - [`config`], [`outcome`]: retention settings and the counts of non-completion outcomes.
//!
//! Nothing here imports tokio, rdkafka, RocksDB or Prometheus, and nothing reads a clock.

pub mod config;
pub mod engine;
pub mod event;
pub mod id;
pub mod outcome;
pub mod persist;
mod room;
pub mod view;

pub use config::{cache_share, EngineConfig};

pub use engine::{Engine, EngineError};
pub use event::{Event, Id, Millis, ReadScope, ReceiptComplete};
pub use outcome::Outcomes;

/// The engine's hash maps use foldhash (hashbrown's default hasher, seeded at random per
/// process) instead of std's SipHash: keys are short ids hashed several times per event, and
/// SipHash was 4% of the processing thread in a profile of the 5M-event benchmark chat.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
