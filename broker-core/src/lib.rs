//! Strait's broker: a Kafka-wire-compatible server with a durable segmented log.
//!
//! Module map (see ARCHITECTURE.md for the data flow and invariants):
//! - [`batch`]: RecordBatch v2 headers: parse, validate (CRC-32C), stamp.
//! - [`log`]: the on-disk partition log: segments, indexes, recovery, retention.
//! - [`producer_state`]: idempotent-producer sequence checks (sans-IO).
//! - [`config`]: the topic configs Strait implements.
//! - [`durability`]: the fsync policy.
//! - [`group`]: the consumer-group coordinator and durable committed offsets.
//! - [`txn`]: the transaction coordinator (two-phase end, markers, timeouts).
//! - [`broker`]: broker state: topics, partitions, high watermarks, background tasks.
//! - [`records`]: the records inside a batch: bounded streaming decompression, the record
//!   walker, and the validation of produced and mirrored batches (Kafka's LogValidator rules).
//! - [`protocol`]: Kafka request dispatch and handlers (sans-IO: frame in, reply out).
//! - [`server`]: the TCP listener and per-connection request pipeline.

pub mod batch;
pub mod broker;
pub mod config;
pub mod durability;
mod fsutil;
pub mod group;
pub mod log;
pub mod producer_state;
pub mod protocol;
pub mod records;
pub mod server;
pub mod txn;

pub use broker::{Broker, BrokerConfig, BrokerError};
pub use durability::FsyncPolicy;
