//! The contract between a gateway and the command log: [`CommandBus`] appends a
//! command record to a partition (the embedded log of `flashsale-engine`, or Kafka's
//! `commands` topic through the gateway's producer). The gateway's dispatcher is
//! written against this trait only, so it is the same code in both modes.

use crate::telemetry::TraceParent;
use flashsale_proto::CommandRecord;
use std::future::Future;
use std::pin::Pin;

pub type BusFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BusError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("partition {0}'s command queue is full")]
    Full(u32),
    #[error("the command log is not available: {0}")]
    Unavailable(String),
}

/// One partition as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionStatus {
    /// Not caught up yet (recovering, or not owned by anyone yet).
    Recovering,
    /// Taking commands.
    Live,
    /// Recovery failed: down until an operator acts; the text says why and what to do.
    /// Reads of its data answer 503, never 404.
    Failed(String),
    /// Its log cannot be written (disk full, I/O error): commands are refused with 503,
    /// reads are served, and writing is retried by itself.
    WriteBlocked(String),
}

impl PartitionStatus {
    /// Is this partition's data in the read model (so a miss is a real 404)?
    pub fn readable(&self) -> bool {
        matches!(
            self,
            PartitionStatus::Live | PartitionStatus::WriteBlocked(_)
        )
    }
}

/// Where commands go: a partitioned, durable log.
pub trait CommandBus: Send + Sync + 'static {
    fn partitions(&self) -> u32;
    /// Appends `record` to `partition`. Resolves once the log has taken it (it may
    /// not be applied yet). Never waits without bound.
    fn send(&self, partition: u32, record: CommandRecord) -> BusFuture<'_>;
    /// [`CommandBus::send`] with the command's trace context, carried beside the
    /// record (a Kafka header, or in-process), never inside its payload. A bus that
    /// cannot carry it drops it.
    fn send_traced(
        &self,
        partition: u32,
        record: CommandRecord,
        trace: Option<TraceParent>,
    ) -> BusFuture<'_> {
        let _ = trace;
        self.send(partition, record)
    }
    /// True when every partition this node serves is owned and caught up.
    fn is_ready(&self) -> bool;
    /// One partition's status. Buses that only know the whole node answer from
    /// [`CommandBus::is_ready`].
    fn partition_status(&self, partition: u32) -> PartitionStatus {
        let _ = partition;
        if self.is_ready() {
            PartitionStatus::Live
        } else {
            PartitionStatus::Recovering
        }
    }
}

/// Is the engine side of this process (serve mode) ready too?
pub trait EngineReadiness: Send + Sync + 'static {
    fn is_ready(&self) -> bool;
    /// Why the engine does not serve though it runs (a topic recreated under it), if
    /// so: `/ready` says it.
    fn not_ready_reason(&self) -> Option<String> {
        None
    }
}
