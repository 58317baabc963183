//! allread: read receipts for chat systems on Apache Kafka.
//!
//! allread consumes the room topics (`chatroom_<room_id>`: messages, joins, leaves) and
//! `read_events`, and emits one `receipt_complete` record when every member of a room has
//! read a message. The semantics are those of `shared/spec/receipts.md`, restated in the
//! README.
//!
//! Map of the modules, in dependency order (each depends only on those above it):
//!
//! - [`receipts`]: the domain. A pure engine of the spec's rules, its state behind a small
//!   storage trait; no Kafka, no RocksDB, no clock.
//! - [`store`]: the storage trait and its engines: RocksDB for production, a `BTreeMap` for tests.
//! - [`codec`]: JSON decoding of input records (typed errors, never a panic) and encoding
//!   of `receipt_complete`.
//! - [`replay`]: runs the engine over records read from a file: the offline path used by
//!   `allread replay`.
//! - [`kafka`]: Kafka adapters: topic administration, the room partitioner (Kafka's
//!   murmur2), the repartition record format.
//! - [`config`]: the typed settings, from TOML and flags.
//! - [`metrics`]: every Prometheus metric, registered in one place.
//! - [`topology`]: the processor's sources, repartition, store and sinks; describe, apply, check.
//! - [`runtime`]: the stream processor (`allread run`): routing to the repartition topic,
//!   one task per partition with its own RocksDB, at-least-once commits, dead letters.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz` and the state queries.
//! - [`demo`]: `allread demo`, the processor on an embedded broker with a simulated chat.
//!
//! The binary (`src/main.rs`) is a thin `clap` front end over these.

pub mod codec;
pub mod config;
pub mod demo;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod receipts;
pub mod replay;
pub mod runtime;
pub mod sim;
pub mod store;
pub mod topology;
