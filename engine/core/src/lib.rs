//! `flashsale-core`: the pure core of the engine. One partition's inventory as a
//! deterministic state machine ([`core`]): `State::apply(offset, log_time, command)
//! -> (reply, events)`; its named invariants ([`invariants`]), which the core asserts,
//! the simulation test checks at every step and `flashsale audit` checks on real
//! state; the I/O-free half of the partition actor ([`actor`]: decode a log record,
//! apply it, collect replies and events, decide when a snapshot is due); the snapshot
//! codec ([`snapshot`]: versioned, checksummed, invariants checked on both sides); and
//! the shape of a log record ([`record`]).
//!
//! What it owns: every decision about stock, holds, limits, expiry and orders.
//!
//! What it must never do: I/O of any kind, read a clock, draw a random number, or
//! depend on tokio, rdkafka, Postgres, axum or hyper (`ops/check-purity.sh` fails
//! `make test` if it does). Time is the log time of the record being applied, so the
//! state after a log prefix is a pure function of that prefix: replay is exact and a
//! seeded simulation reproduces. The hosts that feed it live in `flashsale-engine`
//! (the `engine/` crate).

pub mod actor;
pub mod core;
pub mod invariants;
mod keys;
mod presized;
pub mod record;
pub mod snapshot;

pub use crate::core::{validate_sale, Product, Reservation, State};
pub use invariants::{check_state, Violation};
pub use record::LogRecord;
