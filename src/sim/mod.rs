//! `allread sim`: a simulated chat for benchmarks and end-to-end checks.
//!
//! [`workload`] generates a deterministic chat (rooms, members, messages, and users reading
//! them as chat clients do); [`model`] is an independent implementation of the spec that
//! gives the receipts the chat must produce; [`run`] writes the chat to Kafka (as fast as
//! possible, or open-loop at its own pace) and checks the `receipt_complete` records a
//! processor emitted for it, with read -> receipt latency percentiles; with `--clients`,
//! [`clients`] runs every user as a chat client (its own consumer group, reads sent when it
//! has received the messages).

pub mod clients;
pub mod model;
pub mod rate;
pub mod run;
pub mod workload;
