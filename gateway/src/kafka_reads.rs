//! Reads of a Kafka-mode gateway that any gateway of the deployment acknowledged
//! writes for: **read-your-writes across gateways**, and which log this gateway
//! serves ([`LogStatus`]).
//!
//! Gateway A answers a hold or a checkout only once its own read model applied the
//! events of that command ([`crate::kafka`]), so by then those events are in the
//! `events` topic, below its end offset. Gateway B, asked for that hold or order
//! right after, finds it in its read model, or else:
//! 1. asks the broker for the end offsets of the `events` partitions the read needs
//!    (one `ListOffsets` request: the reservation's or order's partition, from its id;
//!    every partition for a user's orders) — [`EndOffsets`];
//! 2. waits, at most [`READ_WAIT`], until its follower has read that far ([`Progress`]);
//! 3. reads its read model again; an order still missing is looked up in Postgres
//!    (`--postgres`: the orders of the deployment's earlier logs, from before its
//!    topics were recreated: [`crate::pg_orders`]); still missing is a real 404.
//!
//! A read that finds what it asks for costs nothing more. While the broker is
//! unreachable, a gateway serves what its read model holds (it cannot learn of newer
//! writes; none can be acknowledged meanwhile either). If the follower does not get
//! there in time, the read answers 503 + `Retry-After`, never a 404 that may be false.

use crate::error::ApiError;
use crate::orders::{OrderFuture, OrderSource};
use crate::pg_orders::{PgOrders, MAX_ORDERS_PER_USER};
use crate::readmodel::ReadModel;
use flashsale_proto::{OrderId, OrderView, UserId};
use flashsale_runtime::kafka::{KafkaHealth, QuietContext};
use flashsale_runtime::ratelimit::LogLimiter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a read waits for this gateway's follower to reach the end offsets the
/// broker gave (then 503: the client retries).
pub const READ_WAIT: Duration = Duration::from_secs(2);
/// Longest the end-offsets request may take.
const ENDS_TIMEOUT: Duration = Duration::from_secs(2);

/// Which log this gateway serves. Once one of its topics was deleted or recreated,
/// the read model is of a log that is gone: reads and writes answer 503 with the
/// reason (and `/ready` says it) until the gateway adopts the new log
/// (`--adopt-new-topics`) or is restarted.
#[derive(Debug, Default)]
pub struct LogStatus {
    stale: Mutex<Option<String>>,
    is_stale: AtomicBool,
}

impl LogStatus {
    pub fn stale_reason(&self) -> Option<String> {
        if !self.is_stale.load(Ordering::Acquire) {
            return None;
        }
        self.stale.lock().ok().and_then(|s| s.clone())
    }
    pub fn is_stale(&self) -> bool {
        self.is_stale.load(Ordering::Acquire)
    }
    pub fn set_stale(&self, reason: Option<String>) {
        if let Ok(mut s) = self.stale.lock() {
            self.is_stale.store(reason.is_some(), Ordering::Release);
            *s = reason;
        }
    }
}

/// How far the follower has read each `events` partition (the next Kafka offset), and
/// a wake-up for the reads waiting on it.
#[derive(Debug)]
pub struct Progress {
    positions: Vec<AtomicI64>,
    moved: tokio::sync::Notify,
}

impl Progress {
    pub fn new(partitions: u32) -> Self {
        Progress {
            positions: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
            moved: tokio::sync::Notify::new(),
        }
    }
    pub fn position(&self, partition: u32) -> i64 {
        self.positions
            .get(partition as usize)
            .map_or(0, |p| p.load(Ordering::Acquire))
    }
    /// Called by the follower after applying (or skipping) the record before `next`.
    pub fn set(&self, partition: u32, next: i64) {
        if let Some(p) = self.positions.get(partition as usize) {
            p.store(next, Ordering::Release);
            self.moved.notify_waiters();
        }
    }
    fn reached(&self, ends: &[(u32, i64)]) -> bool {
        ends.iter().all(|(p, end)| self.position(*p) >= *end)
    }
}

/// The end offsets of `events` partitions, one `ListOffsets` request per ask (the
/// newest offset, as of the ask: "latest" is timestamp -1 in that request).
pub struct EndOffsets {
    consumer: Arc<BaseConsumer<QuietContext>>,
    topic: String,
}

impl EndOffsets {
    pub fn new(brokers: &str, topic: &str, health: Arc<KafkaHealth>) -> anyhow::Result<Self> {
        let consumer = flashsale_runtime::kafka::base_config(brokers, "flashsale-gateway-ends")
            .set("group.id", "flashsale-gateway-ends")
            .set("enable.auto.commit", "false")
            .create_with_context(QuietContext::new(health))
            .map_err(|e| anyhow::anyhow!("cannot create the Kafka client for end offsets: {e}"))?;
        Ok(EndOffsets {
            consumer: Arc::new(consumer),
            topic: topic.to_string(),
        })
    }

    /// (partition, end offset) for each of `partitions`.
    async fn ends(&self, partitions: Vec<u32>) -> anyhow::Result<Vec<(u32, i64)>> {
        let (c, topic) = (self.consumer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition_offset(&topic, *p as i32, Offset::End)?;
            }
            let got = c.offsets_for_times(tpl, ENDS_TIMEOUT)?;
            partitions
                .iter()
                .map(|p| {
                    let e = got
                        .find_partition(&topic, *p as i32)
                        .ok_or_else(|| anyhow::anyhow!("no end offset for partition {p}"))?;
                    if let Err(err) = e.error() {
                        anyhow::bail!("end offset of partition {p}: {err}");
                    }
                    match e.offset() {
                        Offset::Offset(o) => Ok((*p, o)),
                        // An empty partition.
                        Offset::End | Offset::Beginning | Offset::Invalid => Ok((*p, 0)),
                        other => anyhow::bail!("end offset of partition {p}: {other:?}"),
                    }
                })
                .collect()
        })
        .await
        .map_err(|e| anyhow::anyhow!("end offsets: {e}"))?
    }
}

/// The order reads (and the wait behind reservation reads) of a Kafka-mode gateway.
pub struct KafkaReads {
    read: Arc<ReadModel>,
    progress: Arc<Progress>,
    status: Arc<LogStatus>,
    follower_ready: Arc<AtomicBool>,
    health: Arc<KafkaHealth>,
    ends: EndOffsets,
    partitions: u32,
    history: Option<PgOrders>,
    lines: LogLimiter,
}

impl std::fmt::Debug for KafkaReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaReads")
            .field("history", &self.history)
            .finish()
    }
}

/// What [`KafkaReads`] is built from.
pub struct KafkaReadsParts {
    pub read: Arc<ReadModel>,
    pub progress: Arc<Progress>,
    pub status: Arc<LogStatus>,
    pub follower_ready: Arc<AtomicBool>,
    pub health: Arc<KafkaHealth>,
    pub ends: EndOffsets,
    pub partitions: u32,
    /// Orders of the deployment's earlier logs (`--postgres`).
    pub history: Option<PgOrders>,
}

impl KafkaReads {
    pub fn new(p: KafkaReadsParts) -> Self {
        KafkaReads {
            read: p.read,
            progress: p.progress,
            status: p.status,
            follower_ready: p.follower_ready,
            health: p.health,
            ends: p.ends,
            partitions: p.partitions,
            history: p.history,
            lines: LogLimiter::new(flashsale_runtime::patience::QUIET_EVERY),
        }
    }

    /// Waits until the read model holds every event of `partitions` that was in the log
    /// when this call began (see the module docs). Returns at once when there is
    /// nothing to learn: the follower is still replaying (reads answer 503 then), the
    /// log is gone (stale) or unreachable.
    async fn catch_up_to_log(&self, partitions: Vec<u32>) -> Result<(), ApiError> {
        if !self.follower_ready.load(Ordering::Acquire)
            || self.status.is_stale()
            || !self.health.is_reachable()
        {
            return Ok(());
        }
        let ends = match self.ends.ends(partitions).await {
            Ok(e) => e,
            Err(e) => {
                if self.lines.check("ends").is_some() {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read the events topic's end offsets; reads answer from the read model as it is");
                }
                return Ok(());
            }
        };
        let deadline = tokio::time::Instant::now() + READ_WAIT;
        loop {
            let moved = self.progress.moved.notified();
            if self.progress.reached(&ends) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                return if self.progress.reached(&ends) {
                    Ok(())
                } else {
                    Err(ApiError::unavailable(
                        "This gateway has not read the newest events yet; retry shortly",
                    ))
                };
            }
        }
    }

    fn history_failed(&self, e: flashsale_runtime::pg::PgError) {
        if self.lines.check("history").is_some() {
            tracing::warn!(error = %e, "orders of earlier logs cannot be read from Postgres; answering from the read model");
        }
    }
}

fn newest_first(a: &OrderView, b: &OrderView) -> std::cmp::Ordering {
    b.created_at
        .cmp(&a.created_at)
        .then(b.order_id.cmp(&a.order_id))
}

impl OrderSource for KafkaReads {
    fn order<'a>(&'a self, id: &'a OrderId) -> OrderFuture<'a, Option<OrderView>> {
        Box::pin(async move {
            if let Some(o) = self.read.order(id) {
                return Ok(Some(o));
            }
            let p = u32::from(id.partition);
            if p < self.partitions {
                self.catch_up_to_log(vec![p]).await?;
                if let Some(o) = self.read.order(id) {
                    return Ok(Some(o));
                }
            }
            match &self.history {
                Some(h) => h.order_by_id(id).await.map_err(|e| {
                    tracing::warn!(error = %e, "order read from Postgres failed");
                    ApiError::unavailable("Orders cannot be read right now; retry shortly")
                }),
                None => Ok(None),
            }
        })
    }

    fn orders_of<'a>(&'a self, user: &'a UserId) -> OrderFuture<'a, Vec<OrderView>> {
        Box::pin(async move {
            self.catch_up_to_log((0..self.partitions).collect()).await?;
            let mut list = self.read.orders_of(user);
            if let Some(h) = &self.history {
                match h.orders_of_user(user).await {
                    Ok(older) => {
                        let known: std::collections::HashSet<OrderId> =
                            list.iter().map(|o| o.order_id).collect();
                        list.extend(older.into_iter().filter(|o| !known.contains(&o.order_id)));
                        list.sort_by(newest_first);
                        list.truncate(MAX_ORDERS_PER_USER as usize);
                    }
                    Err(e) => self.history_failed(e),
                }
            }
            Ok(list)
        })
    }

    fn served_from_read_model(&self) -> bool {
        true
    }

    fn catch_up<'a>(&'a self, partition: u32) -> OrderFuture<'a, ()> {
        Box::pin(async move {
            if partition < self.partitions {
                self.catch_up_to_log(vec![partition]).await?;
            }
            Ok(())
        })
    }
}
