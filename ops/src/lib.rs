//! `flashsale-ops`: what operators run. The `flashsale` binary (`src/main.rs`) wires
//! the processes of a deployment out of the other crates:
//!
//! - [`serve`]: embedded mode (`flashsale serve`): gateway, embedded log and engine in
//!   one process over a data directory.
//! - [`kafka`]: Kafka mode (`serve --kafka`, `engine`, `gateway`, `topics`).
//! - [`projector`]: the order projector that follows `events` into Postgres exactly
//!   once (`flashsale projector`, and a sidecar of `serve --kafka`), and `migrate`.
//! - [`operator`]: the operators' CLI: `replay`, `audit`, `snapshot`.
//! - [`cli`]: the command line (one clap struct per subcommand, every flag with an env var).
//! - [`config`]: the typed configuration of each process, built by [`cli`] or by hand.
//!
//! The service scripts (Kafka, Postgres, Redis on loopback), dashboards and the compose
//! file live beside this crate in `ops/`; the plumbing every process shares is
//! `flashsale-runtime` (`ops/runtime/`).
//!
//! What it must never do: decide anything about stock (the engine's core does), or
//! hold state the log cannot rebuild. It only parses, wires, and reports.

// `ApiError` is large, but only on the error path.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod config;
pub mod kafka;
pub mod operator;
pub mod projector;
pub mod publish;
pub mod serve;

pub use serve::{serve, start, Running};
