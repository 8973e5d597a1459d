//! `flashsale-gateway`: the gateway process. The HTTP API of docs/api.md ([`api`]) with its
//! validation ([`json`]) and error bodies ([`error`]); the dispatcher that stamps a
//! request id, puts the command on its partition's log and awaits the engine's reply
//! ([`dispatch`]), with admission control ([`admission`]: a request that waited too
//! long, or past its partition's latency-driven limit or the node's budget, is refused
//! at once, before anything is queued); the mid-sale controls and hold extension
//! ([`controls`]); the read model built from the engine's events, which serves the hot
//! availability and reservation reads from memory and answers a sold-out product's
//! crowd without reaching the log ([`readmodel`]); sales set-up across
//! partitions ([`sales`]); order reads ([`orders`], from Postgres in Kafka mode:
//! [`pg_orders`]); the operators' live console ([`console`], the page at `/console`)
//! and its Server-Sent Events feed ([`stream`]); the Kafka side of a gateway
//! ([`kafka`]: the command producer and the follower of its `replies` partition and
//! of `events`; [`snapshot`]: read-model snapshots, so a gateway starts from one
//! instead of the whole `events` topic); and the HTTP server both modes run ([`server`]: header, body and idle
//! timeouts, a connection limit answered by an immediate 503, a bounded drain on
//! shutdown).
//!
//! What it owns: input validation, per-user rate limits, bounded waits, and turning
//! replies into HTTP answers.
//!
//! What it must never do: decide anything about stock. Every decision is the engine's
//! (`flashsale-core`), made in log order; this crate does not depend on the engine's
//! hosts (`flashsale-engine`) at all: it talks to any log through
//! [`flashsale_runtime::bus::CommandBus`]. The `flashsale` binary that wires a gateway
//! to an embedded or Kafka log lives in `flashsale-ops`.

// `ApiError` carries the whole error body (title, message, details) so handlers build
// it in one place; it is large, but only on the error path, where one allocation more
// or less does not matter.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod api;
pub mod body_timeout;
pub mod console;
pub mod controls;
pub mod dispatch;
pub mod error;
pub mod json;
pub mod kafka;
pub mod kafka_reads;
pub mod orders;
pub mod pg_orders;
pub mod readmodel;
pub mod sales;
pub mod server;
pub mod snapshot;
pub mod stream;
pub mod time;

pub use flashsale_runtime::metrics;
