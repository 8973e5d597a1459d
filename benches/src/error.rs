//! The crate's one error type.

/// What can stop a run before it produces a report. Business outcomes of requests
/// (rejections, timeouts) are not errors here: they are counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The scenario is out of bounds or its TOML does not parse.
    #[error("invalid scenario: {0}")]
    Scenario(String),
    /// The target address is not usable (not a URL, not loopback).
    #[error("invalid target: {0}")]
    Target(String),
    /// Setting up the run failed (server not ready, sale not created, …).
    #[error("set-up failed: {0}")]
    Setup(String),
    /// Reading or writing a report failed.
    #[error("report: {0}")]
    Report(String),
    /// File system.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
