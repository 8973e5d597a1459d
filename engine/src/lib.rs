//! The flashsale engine: one partition's inventory as a pure, deterministic state
//! machine ([`core`]), its named invariants ([`invariants`]), snapshots ([`snapshot`]),
//! and the I/O shell around it: the command log ([`log`], embedded implementation
//! here; Kafka lives in the gateway crate), the snapshot store ([`store`]) and the
//! partition actor ([`actor`]) that applies a log in order and hands replies and events
//! to a sink.
//!
//! What it does not do: HTTP, validation of user input (the gateway does that), or
//! anything with the wall clock inside [`core`]: time is the log time of each record.

pub mod core;
#[doc(inline)]
pub use crate::core::validate_sale;
pub mod invariants;
pub mod snapshot;

pub use crate::core::{Product, Reservation, State};
pub use invariants::{check_state, Violation};
