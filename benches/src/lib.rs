//! flashsale-bench: the load harness capacity planners use to size flashsale, and the
//! baselines it is measured against.
//!
//! What it does: it creates its own sale on the target (unique SKUs per run), offers an
//! **open-loop** load — requests are due at fixed times computed in advance, and each
//! latency is measured from its due time, so a stalled server cannot hide its stall by
//! slowing the client down (coordinated omission) — records every latency in
//! `hdrhistogram`s, shows a live progress line, and ends with a table per operation, an
//! optional JSON report (the shape capacity planners' tools read) and an optional HTML
//! page with charts. At the end of every run it checks correctness (no oversell, no user
//! over its limit) from its own records and the server's admin figures; a violation makes
//! the exit code 1. `--find-max` searches for the highest write rate that holds a p99 SLO;
//! `compare` puts several targets' reports side by side as ratios.
//!
//! What it does not do: it never asserts performance (figures are reported, not tested),
//! never loads anything but loopback addresses, and never runs without bounds — every
//! phase has a fixed schedule, every request a timeout, every phase a hard deadline.
//!
//! Layout:
//! - [`scenario`]: the workload (flags or TOML) and its bounds.
//! - [`schedule`]: the pure open-loop schedule and the coordinated-omission correction.
//! - [`stats`]: outcomes, histograms, percentiles, time series.
//! - [`verify`]: the correctness invariants, as pure functions.
//! - [`client`]: the pooled keep-alive HTTP client and the API calls.
//! - [`runner`]: set-up, warm-up, the measured phase, the read ceiling.
//! - [`find_max`]: the SLO search.
//! - [`report`], [`html`], [`compare`]: the outputs; [`side_by_side`]: the one table of
//!   `scripts/bench-compare.sh` (medians of its rounds, as ratios).
//! - [`soak`]: a long run's figures per window (per minute), the watched server
//!   processes' RSS and CPU, and the pure verdict on flatness (issue 29).
//! - [`fill_events`]: `fill-events`, many synthetic event records for the gateway
//!   start-up benchmark (`scripts/gateway-startup.sh`).
//! - [`plan`]: the capacity planner (pure); [`profile`]: the costs it reads, measured.
//! - [`cli`]: the command line of the `flashsale-bench` binary.
//! - [`contract`]: the slice of docs/api.md spoken here; [`baseline`]: the shared HTTP shell of
//!   the baseline servers in `benches/baselines/` (PostgreSQL and Redis designs), and an
//!   in-memory store used as the fake server in tests.

pub mod baseline;
pub mod cli;
pub mod client;
pub mod compare;
pub mod contract;
pub mod error;
pub mod fill_events;
pub mod find_max;
pub mod html;
pub mod plan;
pub mod profile;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod side_by_side;
pub mod soak;
pub mod stats;
pub mod verify;
pub mod wire;

pub use error::BenchError;
