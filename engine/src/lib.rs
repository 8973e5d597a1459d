//! The flashsale engine: one partition's inventory as a pure, deterministic state
//! machine ([`core`]), its named invariants ([`invariants`]), snapshots ([`snapshot`]),
//! and the I/O-free half of the partition actor ([`actor`]), plus the embedded
//! command log ([`log`]) and the snapshot store ([`store`]) used by the shells.
//!
//! What it does not do: HTTP, validation of user input (the gateway does that),
//! Kafka or Postgres (the gateway crate's shells), or anything with the wall clock
//! inside [`core`]: time is the log time of each record.

pub mod actor;
pub mod core;
pub mod invariants;
pub mod log;
mod presized;
pub mod snapshot;
pub mod store;

pub use crate::core::{validate_sale, Product, Reservation, State};
pub use invariants::{check_state, Violation};
