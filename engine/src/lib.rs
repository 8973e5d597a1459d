//! `flashsale-engine`: the engine process. The pure core (`flashsale-core`, in
//! `engine/core/`) decides; this crate hosts it:
//!
//! - [`embedded`]: embedded mode's actor loop. Per partition a writer thread that owns
//!   the log file and group-commits batches (append + fdatasync) before any of them is
//!   applied, an actor task that applies them in order, a ticker that appends tick
//!   records while holds are due, and a background snapshotter ([`snapshotter`]: a
//!   copy of the state that follows the same records and writes the snapshots).
//! - [`log`]: the embedded command log (one checksummed append-only file per partition).
//! - [`recovery`]: the one loader of a partition's snapshot and log, shared by the
//!   server's recovery and the operators' tools, so both reach the same verdict.
//! - [`kafka`]: Kafka mode's consumer-group host: one actor per assigned partition of
//!   `commands`, recovered from the newest usable snapshot and the log, replies and
//!   events produced, offsets committed after the broker acknowledged them.
//! - [`store`]: where snapshots live ([`store::SnapshotStore`]), with the file store of
//!   embedded mode; [`pg`]: the Postgres store of Kafka mode.
//! - [`trace`]: the engine's span of applying a traced record.
//!
//! What it owns: durability before acknowledgement (nothing is applied, so nothing
//! is answered, before the command is on disk or acknowledged by the broker), recovery,
//! and snapshots.
//!
//! What it must never do: decide anything itself (every decision is
//! `State::apply`'s), read the wall clock into a decision (the core's time is each
//! record's log time), speak HTTP, or depend on the gateway (`flashsale-gateway`): it
//! serves any gateway through [`flashsale_runtime::bus`].

pub mod embedded;
pub mod kafka;
pub mod log;
pub mod pg;
pub mod recovery;
pub mod snapshotter;
pub mod store;
pub mod trace;

// The core's modules, re-exported so a host's users need one import path.
pub use flashsale_core::{actor, check_state, core, invariants, snapshot, State, Violation};
