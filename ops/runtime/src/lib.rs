//! `flashsale-runtime`: the plumbing every flashsale process shares, so that the
//! engine and the gateway need not depend on each other.
//!
//! - [`bus`]: the contract between a gateway and the command log ([`bus::CommandBus`]),
//!   implemented by the embedded log (`flashsale-engine`) and by the gateway's Kafka
//!   producer.
//! - [`kafka`]: client settings (idempotent producers, `acks=all`) and admin helpers;
//!   [`kafka_id`]: a topic's identity (name + Kafka topic id), so snapshots and
//!   projector offsets belong to one log and a recreated topic is a new log.
//! - [`patience`]: waiting for a broker or database that is not there yet: backoff,
//!   one clear line, then quiet (repeats counted).
//! - [`kafka_id`]: a topic's identity (name + Kafka's topic id), the key of snapshots
//!   and projector offsets.
//! - [`patience`]: retry with backoff and rate-limited warnings while a broker is away.
//! - [`ratelimit`]: repeated log lines counted instead of written (librdkafka's own,
//!   and errors a retry loop sees again and again).
//! - [`pg`]: the Postgres pool, migrations and retry policy.
//! - [`metrics`]: the process's Prometheus registry (every series of docs/observability.md
//!   "Observability"), passed down explicitly.
//! - [`telemetry`]: logs, OpenTelemetry traces and the W3C `traceparent` that carries
//!   a trace from the gateway through the log to the engine.
//!
//! What it must never do: decide anything about stock or orders (that is
//! `flashsale-core`), or hold state of its own beyond counters.

pub mod bus;
pub mod kafka;
pub mod kafka_id;
pub mod metrics;
pub mod patience;
pub mod pg;
pub mod ratelimit;
pub mod telemetry;

/// Wall-clock unix milliseconds. The engine's core never calls this: its time is the
/// log time of each record, stamped by whoever appends the record.
pub fn now_ms() -> flashsale_proto::UnixMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
