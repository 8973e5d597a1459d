//! Command dispatch: stamp a request id, put the command on its partition's log, and
//! await the engine's reply (a oneshot in a map keyed by request id) with a deadline.
//! The log behind [`CommandBus`] is the embedded one or Kafka; this code is the same.

use crate::admission::{behind, AdaptiveLimit, Arrived};
use crate::error::ApiError;
use dashmap::DashMap;
use flashsale_proto::*;
pub use flashsale_runtime::bus::{BusError, BusFuture, CommandBus, PartitionStatus};
use flashsale_runtime::telemetry::{self, TraceParent};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

/// Replies awaited by this gateway, by request id.
#[derive(Debug, Default)]
pub struct Pending {
    map: DashMap<RequestId, oneshot::Sender<ReplyRecord>>,
}

impl Pending {
    /// Hands a reply to whoever waits for it; a reply nobody waits for (the wait timed
    /// out, or it was re-sent during a replay) is dropped.
    pub fn complete(&self, rec: ReplyRecord) {
        if let Some((_, tx)) = self.map.remove(&rec.request_id) {
            let _ = tx.send(rec);
        }
    }
    /// True while a request with this id awaits its reply.
    pub fn is_waiting(&self, id: &RequestId) -> bool {
        self.map.contains_key(id)
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Removes the waiter when the wait ends for any reason (reply, deadline, client gone).
struct Waiter<'a> {
    pending: &'a Pending,
    id: RequestId,
}
impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.pending.map.remove(&self.id);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct DispatchConfig {
    pub gateway_id: u32,
    /// How long to wait for the engine's reply before answering 503.
    pub reply_deadline: Duration,
    /// Cap on commands awaiting a reply; past it, 503 at once.
    pub max_in_flight: usize,
    /// Cap on commands of one partition awaiting a reply; past it, 503 at once. A hot
    /// SKU lives on one partition: this keeps it from taking the whole node's budget,
    /// so the other products of the sale are still served. The partition's adaptive
    /// limit ([`AdaptiveLimit`]) starts here and never goes above it.
    pub max_in_flight_per_partition: usize,
}

pub struct Dispatcher {
    bus: Arc<dyn CommandBus>,
    pending: Arc<Pending>,
    cfg: DispatchConfig,
    in_flight: Semaphore,
    /// One budget per partition, adapting to its latency (docs/overload.md).
    per_partition: Vec<AdaptiveLimit>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Dispatcher {
    pub fn new(bus: Arc<dyn CommandBus>, pending: Arc<Pending>, cfg: DispatchConfig) -> Self {
        let per_partition = (0..bus.partitions())
            .map(|_| AdaptiveLimit::new(cfg.max_in_flight_per_partition.max(1)))
            .collect();
        Dispatcher {
            bus,
            pending,
            in_flight: Semaphore::new(cfg.max_in_flight.max(1)),
            per_partition,
            cfg,
        }
    }

    pub fn partitions(&self) -> u32 {
        self.bus.partitions()
    }
    pub fn is_ready(&self) -> bool {
        self.bus.is_ready()
    }
    pub fn partition_status(&self, partition: u32) -> PartitionStatus {
        self.bus.partition_status(partition)
    }
    /// Partitions whose data is not in the read model now (recovering, or failed):
    /// a read that misses there must answer 503, not 404 or `[]`.
    pub fn unreadable_partitions(&self) -> Vec<u32> {
        (0..self.partitions())
            .filter(|&p| !self.bus.partition_status(p).readable())
            .collect()
    }
    /// 503 for a read of `partition` that found nothing while its data is not loaded.
    pub fn check_readable(&self, partition: u32) -> Result<(), ApiError> {
        match self.bus.partition_status(partition) {
            s if s.readable() => Ok(()),
            PartitionStatus::Failed(e) => Err(ApiError::partition_down(partition, e)),
            _ => Err(ApiError::unavailable(format!(
                "Partition {partition} is still recovering; retry shortly"
            ))),
        }
    }
    pub fn partition_of(&self, sku: &SkuId) -> u32 {
        partition_for_key(sku.as_str().as_bytes(), self.partitions())
    }

    /// A partition's adaptive limit now (`None`: no such partition).
    pub fn partition_limit(&self, partition: u32) -> Option<u32> {
        self.per_partition
            .get(partition as usize)
            .map(|l| l.limit())
    }

    /// Sends a command and waits for its reply (in a `command` span when traced). The
    /// request counts as arrived now: see [`Dispatcher::call_arrived`].
    pub async fn call(
        &self,
        partition: u32,
        command: Command,
        idempotency_key: Option<String>,
    ) -> Result<ReplyRecord, ApiError> {
        self.call_arrived(partition, command, idempotency_key, None)
            .await
    }

    /// [`Dispatcher::call`] for a request that arrived at `arrived` (the server's
    /// stamp, before its body was read): its admission counts the time it has waited
    /// (docs/overload.md), and its reply deadline runs from its arrival.
    pub async fn call_arrived(
        &self,
        partition: u32,
        command: Command,
        idempotency_key: Option<String>,
        arrived: Option<Arrived>,
    ) -> Result<ReplyRecord, ApiError> {
        let span = telemetry::command_span(command_name(&command), partition);
        if span.is_disabled() {
            return self
                .call_inner(partition, command, idempotency_key, None, arrived)
                .await;
        }
        let trace = TraceParent::of(&span);
        let result = tracing::Instrument::instrument(
            self.call_inner(partition, command, idempotency_key, trace, arrived),
            span.clone(),
        )
        .await;
        if let Ok(rec) = &result {
            span.record("flashsale.offset", rec.offset);
        }
        result
    }

    async fn call_inner(
        &self,
        partition: u32,
        command: Command,
        idempotency_key: Option<String>,
        trace: Option<TraceParent>,
        arrived: Option<Arrived>,
    ) -> Result<ReplyRecord, ApiError> {
        // Admission: past any budget the request is refused at once, before anything
        // is sent, so it leaves no trace in the state (nothing to retry but the request).
        let limit = self
            .per_partition
            .get(partition as usize)
            .ok_or_else(|| ApiError::unavailable(format!("No partition {partition}")))?;
        // Rule 0 first (docs/overload.md): a node behind on CPU sheds now, cheaply,
        // rather than after its request waited its turn.
        if let Some(a) = arrived {
            if let Some(max_lag) = a.policy.max_lag {
                let waited = a.at.elapsed();
                if behind(a.lag, waited, max_lag, limit.in_flight()) {
                    return Err(ApiError::shed(&format!(
                        "the server is behind (this request waited about {} ms; the limit is {} ms)",
                        a.lag.saturating_add(waited).as_millis(),
                        max_lag.as_millis()
                    )));
                }
            }
        }
        let _partition_slot = limit
            .try_acquire()
            .ok_or_else(|| ApiError::shed("this product's partition is at its in-flight limit"))?;
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| ApiError::shed("the node is at its in-flight limit"))?;
        match self.bus.partition_status(partition) {
            PartitionStatus::Live => {}
            PartitionStatus::Recovering => {
                return Err(ApiError::unavailable(
                    "The engine is recovering; retry shortly",
                ))
            }
            PartitionStatus::Failed(e) => return Err(ApiError::partition_down(partition, e)),
            PartitionStatus::WriteBlocked(e) => {
                return Err(ApiError::unavailable(format!(
                    "Partition {partition} cannot write its command log now ({e}); retry shortly"
                )))
            }
        }
        // The request's deadline runs from its arrival. Checked last before the hand-over
        // (nothing below awaits until the send): a request that waited too long, or
        // whose deadline passed, is never queued nor produced to Kafka.
        let arrived_at = arrived.map_or_else(Instant::now, |a| a.at);
        let deadline = arrived_at + self.cfg.reply_deadline;
        let now = Instant::now();
        let waited = now.saturating_duration_since(arrived_at);
        if now >= deadline {
            return Err(ApiError::shed(&format!(
                "this request waited {} ms, past its deadline, before its turn",
                waited.as_millis()
            )));
        }
        if let Some(max_wait) = arrived.and_then(|a| a.policy.max_wait) {
            if waited > max_wait {
                return Err(ApiError::shed(&format!(
                    "this request waited {} ms before its turn (the limit is {} ms)",
                    waited.as_millis(),
                    max_wait.as_millis()
                )));
            }
        }
        let target = arrived.and_then(|a| a.policy.target);
        let request_id = RequestId::from_ulid(ulid::Ulid::new());
        let (tx, rx) = oneshot::channel();
        self.pending.map.insert(request_id, tx);
        let _waiter = Waiter {
            pending: &self.pending,
            id: request_id,
        };
        let record = CommandRecord {
            request_id,
            reply_to: self.cfg.gateway_id,
            idempotency_key,
            command,
        };
        // The partition's latency, for its adaptive limit: hand-over to reply, or to
        // the deadline when none came (a strong "too slow").
        let record_latency = || {
            if let Some(target) = target {
                let end = Instant::now();
                limit.record(end.saturating_duration_since(now), target, end);
            }
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        match tokio::time::timeout_at(deadline, self.bus.send_traced(partition, record, trace))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(ApiError::unavailable(format!(
                    "{e}; retry with the same Idempotency-Key"
                )))
            }
            Err(_) => {
                record_latency();
                return Err(ApiError::unavailable("The command log did not accept the request in time; retry with the same Idempotency-Key"));
            }
        }
        let result = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) | Err(_) => Err(ApiError::unavailable(
                "The engine did not answer in time; the outcome is unknown: retry with the same Idempotency-Key",
            )),
        };
        record_latency();
        result
    }
}

/// A command's name in spans.
fn command_name(c: &Command) -> &'static str {
    match c {
        Command::ConfigureSale(_) => "configure_sale",
        Command::DropSale { .. } => "drop_sale",
        Command::Reserve { .. } => "reserve",
        Command::Checkout(_) => "checkout",
        Command::Cancel { .. } => "cancel",
        Command::Tick => "tick",
        Command::Extend { .. } => "extend",
        Command::AdjustInventory { .. } => "adjust_inventory",
        Command::PauseProduct { .. } => "pause_product",
        Command::ResumeProduct { .. } => "resume_product",
        Command::EndSale { .. } => "end_sale",
        Command::ConfigureSaleWith { .. } => "configure_sale",
        Command::DeleteSale { .. } => "delete_sale",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::sync::Mutex;

    /// A log that takes every command and never answers: each call stays in flight.
    #[derive(Default)]
    struct SilentBus {
        sent: Mutex<Vec<(u32, RequestId)>>,
    }
    impl CommandBus for SilentBus {
        fn partitions(&self) -> u32 {
            2
        }
        fn send(&self, partition: u32, record: CommandRecord) -> BusFuture<'_> {
            self.sent
                .lock()
                .unwrap()
                .push((partition, record.request_id));
            Box::pin(std::future::ready(Ok(())))
        }
        fn is_ready(&self) -> bool {
            true
        }
    }

    fn reserve(user: &str) -> Command {
        Command::Reserve {
            user: UserId::parse(user).unwrap(),
            sku: SkuId::parse("HOT").unwrap(),
            quantity: 1,
        }
    }

    async fn sent_eventually(bus: &SilentBus, n: usize) {
        for _ in 0..1000 {
            if bus.sent.lock().unwrap().len() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("expected {n} commands on the bus");
    }

    #[tokio::test]
    async fn past_the_partition_or_node_budget_a_request_is_shed_at_once_and_sends_nothing() {
        let bus = Arc::new(SilentBus::default());
        let d = Arc::new(Dispatcher::new(
            bus.clone(),
            Arc::new(Pending::default()),
            DispatchConfig {
                gateway_id: 0,
                reply_deadline: Duration::from_secs(30),
                max_in_flight: 3,
                max_in_flight_per_partition: 2,
            },
        ));
        // Two requests of partition 0 wait for replies that never come.
        let waiting: Vec<_> = (0..2)
            .map(|i| {
                let d = d.clone();
                tokio::spawn(async move { d.call(0, reserve(&format!("u{i}")), None).await })
            })
            .collect();
        sent_eventually(&bus, 2).await;
        // The third of partition 0 is refused at once: 503, Retry-After, shed.
        let e = d.call(0, reserve("u2"), None).await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.payload.retry_after_s, Some(1));
        assert!(e.payload.shed, "{e:?}");
        assert_eq!(
            bus.sent.lock().unwrap().len(),
            2,
            "a shed request never reaches the log"
        );
        // Another partition still has room: the hot partition does not starve it ...
        let other = {
            let d = d.clone();
            tokio::spawn(async move { d.call(1, reserve("v0"), None).await })
        };
        sent_eventually(&bus, 3).await;
        // ... until the node's whole budget (3) is in flight.
        let e = d.call(1, reserve("v1"), None).await.unwrap_err();
        assert!(e.payload.shed, "{e:?}");
        assert_eq!(bus.sent.lock().unwrap().len(), 3);
        for w in waiting {
            w.abort();
        }
        other.abort();
    }

    fn dispatcher(bus: Arc<SilentBus>, reply_deadline: Duration) -> Dispatcher {
        Dispatcher::new(
            bus,
            Arc::new(Pending::default()),
            DispatchConfig {
                gateway_id: 0,
                reply_deadline,
                max_in_flight: 100,
                max_in_flight_per_partition: 100,
            },
        )
    }

    /// The sojourn rule: a request that has waited past `max_wait` since the server had
    /// its head is shed when its turn comes, and its command never reaches the log; one
    /// within it is sent.
    #[tokio::test]
    async fn a_request_that_waited_too_long_is_shed_and_never_sent() {
        let bus = Arc::new(SilentBus::default());
        let d = dispatcher(bus.clone(), Duration::from_secs(30));
        let policy = crate::admission::AdmissionPolicy::from_millis(100, 0, 0);
        let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(1)) else {
            return; // a clock too young to go back a second: nothing to check
        };
        let late = Arrived {
            at: long_ago,
            lag: Duration::ZERO,
            policy,
        };
        let e = d
            .call_arrived(0, reserve("late"), None, Some(late))
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.payload.shed, "{e:?}");
        assert_eq!(e.payload.retry_after_s, Some(1));
        assert!(e.payload.message.contains("waited"), "{e:?}");
        assert!(
            bus.sent.lock().unwrap().is_empty(),
            "never handed to the log"
        );
        // A fresh request is sent (it then waits for a reply that never comes).
        let fresh = Arrived {
            at: Instant::now(),
            lag: Duration::ZERO,
            policy,
        };
        let d = Arc::new(d);
        let waiting = {
            let d = d.clone();
            tokio::spawn(
                async move { d.call_arrived(0, reserve("fresh"), None, Some(fresh)).await },
            )
        };
        sent_eventually(&bus, 1).await;
        waiting.abort();
    }

    /// A request whose reply deadline (counted from its arrival) has passed is never
    /// sent, even with the sojourn rule off: in Kafka mode, never produced.
    #[tokio::test]
    async fn a_request_past_its_deadline_is_never_sent() {
        let bus = Arc::new(SilentBus::default());
        let d = dispatcher(bus.clone(), Duration::from_millis(500));
        let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(1)) else {
            return;
        };
        let late = Arrived {
            at: long_ago,
            lag: Duration::ZERO,
            policy: crate::admission::AdmissionPolicy::from_millis(0, 0, 0),
        };
        let e = d
            .call_arrived(1, reserve("late"), None, Some(late))
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.payload.shed, "{e:?}");
        assert!(e.payload.message.contains("deadline"), "{e:?}");
        assert!(bus.sent.lock().unwrap().is_empty());
    }

    /// Rule 0: a request that arrived while the node was behind (its bytes waited in
    /// the socket, as the runtime's lag says) is shed at once, although it has not
    /// waited since its head was read and its partition has room, once its partition
    /// is busy (the floor of [`crate::admission::MIN_LIMIT`] in flight); below the
    /// floor, or with the rule off, it is sent.
    #[tokio::test]
    async fn a_request_that_arrived_while_the_node_was_behind_is_shed_at_once() {
        use crate::admission::{AdmissionPolicy, MIN_LIMIT};
        let bus = Arc::new(SilentBus::default());
        let d = Arc::new(dispatcher(bus.clone(), Duration::from_secs(30)));
        let late = |max_lag_ms| Arrived {
            at: Instant::now(),
            lag: Duration::from_millis(50),
            policy: AdmissionPolicy::from_millis(0, 0, max_lag_ms),
        };
        // Below the floor: sent although the node is behind.
        let mut waiting = Vec::new();
        for i in 0..MIN_LIMIT {
            let d = d.clone();
            let a = late(10);
            waiting.push(tokio::spawn(async move {
                d.call_arrived(0, reserve(&format!("u{i}")), None, Some(a))
                    .await
            }));
            sent_eventually(&bus, i as usize + 1).await;
        }
        // At the floor: shed at once, never handed to the log.
        let e = d
            .call_arrived(0, reserve("behind"), None, Some(late(10)))
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.payload.shed, "{e:?}");
        assert_eq!(e.payload.retry_after_s, Some(1));
        assert!(e.payload.message.contains("behind"), "{e:?}");
        assert_eq!(bus.sent.lock().unwrap().len(), MIN_LIMIT as usize);
        // The same lag with the rule off: sent.
        let off = {
            let d = d.clone();
            tokio::spawn(
                async move { d.call_arrived(0, reserve("off"), None, Some(late(0))).await },
            )
        };
        sent_eventually(&bus, MIN_LIMIT as usize + 1).await;
        // A call without a server's stamp (admin, tests) is never shed by rule 0.
        let plain = {
            let d = d.clone();
            tokio::spawn(async move { d.call(0, reserve("plain"), None).await })
        };
        sent_eventually(&bus, MIN_LIMIT as usize + 2).await;
        for w in waiting {
            w.abort();
        }
        off.abort();
        plain.abort();
    }
}
