//! The gateway's half of Kafka mode: [`KafkaBus`] puts commands on `commands` (the
//! commands of one partition that arrive together as one record: [`batcher`]), and
//! the [`Follower`] thread ([`follower`]) reads this gateway's `replies` partition and
//! every `events` partition.
//!
//! One consumer, one thread, for both topics: the read model and the replies are then
//! ordered by one hand, which is what read-your-writes needs (see [`super`]): a reply
//! for command offset `o` of partition `p` is handed to its waiting request only once
//! the read model has applied partition `p`'s events through `o`. Replies wait in a
//! bounded map meanwhile; nobody waits for one whose request is gone (deadline passed,
//! or a reply re-sent by an engine replaying after a failover), so it is dropped.
//!
//! While the broker is unreachable (an outage [`KafkaHealth`] announced), commands are
//! refused at once with 503 + `Retry-After` (the partitions are
//! [`PartitionStatus::WriteBlocked`]) and reads are served from the read model; a
//! command already queued fails after [`COMMAND_DELIVERY_TIMEOUT`] (its request was
//! answered 503 at its deadline). Both clients come back by themselves.
//!
//! **Topics recreated.** The follower knows the identity (name + Kafka topic id,
//! `flashsale_runtime::kafka_id`) of the three topics it started with, and asks the
//! broker again every [`IDENTITY_EVERY`], at once when a partition's offsets go
//! backwards (a new topic starts at 0), and soon after an output is dropped as fenced
//! (a new log's owner epochs start low). When one was deleted or recreated, the state
//! it holds is of a log that is gone: it stops applying anything, forgets the read
//! model, says so in one ERROR line naming each topic with its old and new id, and
//! every read and write answers 503 with that reason, as `/ready` does. With
//! `--adopt-new-topics`, once `commands` and `events` both exist under new ids (with
//! the same partition counts), it follows the new log from its start instead: the
//! read model is rebuilt from the new `events`, writes go to the new `commands`.

mod batcher;
mod follower;

pub use batcher::{
    BatchLimits, DEFAULT_BATCH_BYTES, DEFAULT_BATCH_COMMANDS, DEFAULT_BATCH_GAP_US,
    DEFAULT_BATCH_WAIT_US, MAX_BATCH_BYTES,
};
pub use follower::{Follower, FollowerOptions, IDENTITY_EVERY};

use crate::dispatch::{BusError, BusFuture, CommandBus};
use crate::kafka_reads::LogStatus;
use anyhow::Context;
use batcher::Batcher;
use flashsale_proto::*;
use flashsale_runtime::bus::{EngineReadiness, PartitionStatus};
use flashsale_runtime::kafka::{
    producer_config, Delivery, KafkaHealth, QuietContext, STATS_INTERVAL_MS,
};
use flashsale_runtime::telemetry::TraceParent;
use rdkafka::producer::{FutureProducer, Producer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a command may wait in the producer for the broker before it fails. Its
/// request was answered 503 at the reply deadline long before; a bound keeps commands
/// from reaching the log minutes after the buyer was told to retry.
pub const COMMAND_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KafkaBus {
    /// The producer, behind the per-partition command batches.
    batcher: Arc<Batcher>,
    health: Arc<KafkaHealth>,
    topic: String,
    partitions: u32,
    follower_ready: Arc<AtomicBool>,
    engine: Option<Arc<dyn EngineReadiness>>,
    closing: AtomicBool,
    /// Set while the topics this gateway started with are gone (see the module docs).
    log: Arc<LogStatus>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish()
    }
}

/// The record key: the SKU (the Java client's partitioner maps it to the same
/// partition). Commands that name a reservation, not a SKU, carry no key: their
/// partition is the one inside the reservation id.
pub fn command_key(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Reserve { sku, .. } => Some(sku.as_str()),
        Command::ConfigureSale(cfg) => cfg.products.first().map(|p| p.sku.as_str()),
        _ => None,
    }
}

impl KafkaBus {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        brokers: &str,
        topics: &Topics,
        partitions: u32,
        linger_ms: u32,
        batching: BatchLimits,
        follower_ready: Arc<AtomicBool>,
        engine: Option<Arc<dyn EngineReadiness>>,
        health: Arc<KafkaHealth>,
        log: Arc<LogStatus>,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer<QuietContext> = producer_config(
            brokers,
            "flashsale-gateway",
            linger_ms,
            Delivery::Within(COMMAND_DELIVERY_TIMEOUT),
        )
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .create_with_context(QuietContext::new(health.clone()))
        .context("cannot create the Kafka producer")?;
        Ok(KafkaBus {
            batcher: Batcher::new(producer, topics.commands.clone(), partitions, batching),
            health,
            topic: topics.commands.clone(),
            partitions,
            follower_ready,
            engine,
            closing: AtomicBool::new(false),
            log,
        })
    }

    /// Refuses new commands and waits (bounded) for the ones queued to be acked.
    pub fn close(&self, timeout: Duration) {
        self.closing.store(true, Ordering::Release);
        if let Err(e) = self.batcher.producer().flush(timeout) {
            tracing::warn!(error = %e, "commands not all acknowledged at shutdown");
        }
    }
}

impl CommandBus for KafkaBus {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn send(&self, partition: u32, record: CommandRecord) -> BusFuture<'_> {
        self.send_traced(partition, record, None)
    }

    /// The command leaves in its partition's next record ([`batcher`]: alone when
    /// nothing of the partition is in flight, else batched with the commands that
    /// arrive meanwhile). The trace context travels as a W3C `traceparent` record
    /// header (a batch carries its first traced command's).
    fn send_traced(
        &self,
        partition: u32,
        record: CommandRecord,
        trace: Option<TraceParent>,
    ) -> BusFuture<'_> {
        Box::pin(async move {
            if self.closing.load(Ordering::Acquire) {
                return Err(BusError::Unavailable("the server is shutting down".into()));
            }
            if let Some(reason) = self.log.stale_reason() {
                return Err(BusError::Unavailable(reason));
            }
            if !self.health.is_reachable() {
                return Err(BusError::Unavailable(
                    "the command log (Kafka) is unreachable; nothing was done".into(),
                ));
            }
            self.batcher.send(partition, &record, trace).await
        })
    }

    fn is_ready(&self) -> bool {
        !self.closing.load(Ordering::Acquire)
            && !self.log.is_stale()
            && self.follower_ready.load(Ordering::Acquire)
            && self.engine.as_ref().is_none_or(|e| e.is_ready())
    }

    /// During a broker outage every partition is write-blocked: commands answer 503 +
    /// `Retry-After` at once, reads are served from the read model. Once a topic was
    /// recreated every partition is down with that reason (nothing of the old log is
    /// served) until the new log is adopted.
    fn partition_status(&self, _partition: u32) -> PartitionStatus {
        if let Some(reason) = self.log.stale_reason() {
            PartitionStatus::Failed(reason)
        } else if let Some(reason) = self.engine.as_ref().and_then(|e| e.not_ready_reason()) {
            // `serve --kafka`: the engine in this process saw a topic recreated.
            PartitionStatus::Failed(reason)
        } else if !self.is_ready() {
            PartitionStatus::Recovering
        } else if !self.health.is_reachable() {
            PartitionStatus::WriteBlocked("Kafka is unreachable".to_string())
        } else {
            PartitionStatus::Live
        }
    }
}
