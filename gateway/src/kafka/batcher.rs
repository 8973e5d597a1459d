//! Command batches: the commands bound for one `commands` partition that arrive
//! together leave as ONE Kafka record (`[BATCH_FORMAT_VERSION] ++ bincode(Vec<CommandRecord>)`,
//! the layout of the engine's `events` and `replies` batches; ARCHITECTURE.md, "Command
//! batches"), which the engine applies as consecutive commands at the record's offset.
//!
//! The rule, per partition (group commit, no timer on the quiet path):
//! - nothing of the partition in flight, and its last record left at least
//!   [`BatchLimits::min_gap`] ago: the command leaves at once, alone, as a
//!   single-command record (what any Kafka client writes). A lone buyer waits for
//!   nothing.
//! - a record of the partition in flight: the command waits for its acknowledgement
//!   with the others that arrive meanwhile, and they leave together when it comes (but
//!   not sooner than `min_gap` after the record before them left: under a steady
//!   stream a partition's records are paced, so that each carries a few of them, the
//!   way a producer's linger would, without delaying a lone command); or sooner, when
//!   the batch reached [`BatchLimits::max_commands`] commands or would pass
//!   [`BatchLimits::max_bytes`], or its oldest command waited
//!   [`BatchLimits::max_wait`] (a slow acknowledgement does not hold a batch back
//!   longer than that).
//!
//! Records of one partition are handed to the producer in queue order under the
//! partition's lock; the idempotent producer keeps that order on the log. A batch is
//! acknowledged or refused as a whole: every command in it gets the same answer.

use crate::dispatch::BusError;
use flashsale_proto::{encode, BatchEncoder, CommandRecord, MAX_MESSAGE_BYTES};
use flashsale_runtime::kafka::QuietContext;
use flashsale_runtime::telemetry::{TraceParent, TRACEPARENT_HEADER};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How big a command batch may grow and how long its first command may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most commands in one record (1: every command is a record of its own).
    pub max_commands: usize,
    /// Most payload bytes of one record (a single command bigger than this still goes,
    /// alone).
    pub max_bytes: usize,
    /// Longest a command waits behind its partition's record in flight.
    pub max_wait: Duration,
    /// Least time between two records of one partition while commands keep coming
    /// (a command that finds its partition quiet for this long leaves at once).
    pub min_gap: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_commands: DEFAULT_BATCH_COMMANDS,
            max_bytes: DEFAULT_BATCH_BYTES,
            max_wait: Duration::from_micros(DEFAULT_BATCH_WAIT_US),
            min_gap: Duration::from_micros(DEFAULT_BATCH_GAP_US),
        }
    }
}

/// Defaults of `--command-batch-*` (see their `--help`).
pub const DEFAULT_BATCH_COMMANDS: usize = 512;
pub const DEFAULT_BATCH_BYTES: usize = 256 * 1024;
pub const DEFAULT_BATCH_WAIT_US: u64 = 5_000;
pub const DEFAULT_BATCH_GAP_US: u64 = 1_000;
/// Upper bound of `--command-batch-bytes`: under the broker's default
/// `message.max.bytes` (1 MiB) and the engine's decoding limit.
pub const MAX_BATCH_BYTES: usize = 1_000_000;
const _: () = assert!(MAX_BATCH_BYTES < MAX_MESSAGE_BYTES);

type Answer = oneshot::Sender<Result<(), BusError>>;

struct Queued {
    /// `encode(&record)`: version byte + bincode.
    payload: Vec<u8>,
    key: Option<String>,
    trace: Option<TraceParent>,
    answer: Answer,
}

#[derive(Default)]
struct Part {
    queue: Vec<Queued>,
    bytes: usize,
    /// Records of this partition handed to the producer and not answered yet.
    in_flight: usize,
    /// Bumped whenever the queue leaves: a timer armed for an earlier queue is void.
    generation: u64,
    timer_armed: bool,
    /// A timer waits for the end of the gap after the last record (`min_gap`).
    gap_armed: bool,
    /// When the partition's last record was handed to the producer.
    last_sent: Option<Instant>,
}

impl Part {
    /// How much longer the queue must wait before it may leave by the gap rule
    /// (`None`: it may leave now).
    fn gap_left(&self, min_gap: Duration, now: Instant) -> Option<Duration> {
        let since = now.saturating_duration_since(self.last_sent?);
        (since < min_gap).then(|| min_gap - since)
    }
}

pub(super) struct Batcher {
    producer: FutureProducer<QuietContext>,
    topic: String,
    limits: BatchLimits,
    parts: Vec<Mutex<Part>>,
}

impl Batcher {
    pub(super) fn new(
        producer: FutureProducer<QuietContext>,
        topic: String,
        partitions: u32,
        limits: BatchLimits,
    ) -> Arc<Self> {
        let limits = BatchLimits {
            max_commands: limits.max_commands.max(1),
            max_bytes: limits.max_bytes.clamp(1, MAX_BATCH_BYTES),
            max_wait: limits.max_wait,
            // Never longer than a command may wait at all.
            min_gap: limits.min_gap.min(limits.max_wait),
        };
        Arc::new(Batcher {
            producer,
            topic,
            limits,
            parts: (0..partitions)
                .map(|_| Mutex::new(Part::default()))
                .collect(),
        })
    }

    pub(super) fn producer(&self) -> &FutureProducer<QuietContext> {
        &self.producer
    }

    fn part(&self, partition: u32) -> MutexGuard<'_, Part> {
        self.parts[partition as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one command for `partition`; the answer says whether the broker took
    /// the record it left in. Must be called inside a tokio runtime.
    pub(super) async fn send(
        self: &Arc<Self>,
        partition: u32,
        record: &CommandRecord,
        trace: Option<TraceParent>,
    ) -> Result<(), BusError> {
        if partition as usize >= self.parts.len() {
            return Err(BusError::Unavailable(format!(
                "no commands partition {partition}"
            )));
        }
        let payload = encode(record);
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            key: super::command_key(&record.command).map(str::to_string),
            trace,
            answer,
            payload,
        };
        {
            let mut part = self.part(partition);
            if !part.queue.is_empty() && part.bytes + queued.payload.len() > self.limits.max_bytes {
                self.send_locked(partition, &mut part);
            }
            part.bytes += queued.payload.len();
            part.queue.push(queued);
            let gap_left = if part.in_flight == 0 {
                part.gap_left(self.limits.min_gap, Instant::now())
            } else {
                None
            };
            if (part.in_flight == 0 && gap_left.is_none())
                || part.queue.len() >= self.limits.max_commands
                || part.bytes >= self.limits.max_bytes
            {
                self.send_locked(partition, &mut part);
            } else {
                if let Some(left) = gap_left {
                    self.arm_gap(partition, &mut part, left);
                }
                self.arm_wait(partition, &mut part);
            }
        }
        answered
            .await
            .unwrap_or_else(|_| Err(BusError::Unavailable("the Kafka producer stopped".into())))
    }

    /// The queue leaves after `max_wait` whatever happens (once per queue).
    fn arm_wait(self: &Arc<Self>, partition: u32, part: &mut Part) {
        if part.timer_armed {
            return;
        }
        part.timer_armed = true;
        let generation = part.generation;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(me.limits.max_wait).await;
            let mut part = me.part(partition);
            if part.generation == generation && !part.queue.is_empty() {
                me.send_locked(partition, &mut part);
            }
        });
    }

    /// The queue leaves when the gap after the last record is over, if nothing of the
    /// partition is in flight then (else the acknowledgement sends it).
    fn arm_gap(self: &Arc<Self>, partition: u32, part: &mut Part, left: Duration) {
        if part.gap_armed {
            return;
        }
        part.gap_armed = true;
        let generation = part.generation;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            let mut part = me.part(partition);
            if part.generation == generation {
                part.gap_armed = false;
                if part.in_flight == 0 && !part.queue.is_empty() {
                    me.send_locked(partition, &mut part);
                }
            }
        });
    }

    /// Hands the partition's queue to the producer as one record (under its lock: the
    /// order of records is the order of queues).
    fn send_locked(self: &Arc<Self>, partition: u32, part: &mut Part) {
        let queue = std::mem::take(&mut part.queue);
        part.bytes = 0;
        part.generation += 1;
        part.timer_armed = false;
        part.gap_armed = false;
        if queue.is_empty() {
            return;
        }
        let payload = if queue.len() == 1 {
            // One command: the single layout, as any Kafka client writes it.
            queue[0].payload.clone()
        } else {
            let mut enc = BatchEncoder::new();
            for q in &queue {
                enc.push_encoded(&q.payload);
            }
            enc.take()
        };
        // Every command of a batch is of this partition; the key (the partitioner's
        // input for other clients) is its first keyed command's SKU.
        let key = queue.iter().find_map(|q| q.key.as_deref());
        // The trace context of the first traced command (one header per record).
        let trace = queue
            .iter()
            .find_map(|q| q.trace.as_ref())
            .map(|t| t.encode());
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .partition(partition as i32)
            .payload(&payload);
        if let Some(k) = key {
            rec = rec.key(k.as_bytes());
        }
        if let Some(t) = &trace {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: TRACEPARENT_HEADER,
                value: Some(&t[..]),
            }));
        }
        // The record's timestamp is left to the client: CreateTime = now.
        let delivery = match self.producer.send_result(rec) {
            Ok(d) => d,
            Err((e, _)) => {
                let err = match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        BusError::Full(partition)
                    }
                    e => BusError::Unavailable(e.to_string()),
                };
                answer_all(queue, &err);
                return;
            }
        };
        part.in_flight += 1;
        part.last_sent = Some(Instant::now());
        let me = self.clone();
        tokio::spawn(async move {
            let result = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(BusError::Unavailable(format!(
                    "Kafka did not take the command: {e}"
                ))),
                Err(_) => Err(BusError::Unavailable("the Kafka producer stopped".into())),
            };
            match result {
                Ok(()) => {
                    for q in queue {
                        let _ = q.answer.send(Ok(()));
                    }
                }
                Err(e) => answer_all(queue, &e),
            }
            let mut part = me.part(partition);
            part.in_flight -= 1;
            if part.in_flight == 0 && !part.queue.is_empty() {
                match part.gap_left(me.limits.min_gap, Instant::now()) {
                    None => me.send_locked(partition, &mut part),
                    Some(left) => me.arm_gap(partition, &mut part, left),
                }
            }
        });
    }
}

fn answer_all(queue: Vec<Queued>, err: &BusError) {
    for q in queue {
        let _ = q.answer.send(Err(clone_error(err)));
    }
}

fn clone_error(e: &BusError) -> BusError {
    match e {
        BusError::Full(p) => BusError::Full(*p),
        BusError::Unavailable(s) => BusError::Unavailable(s.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_rule_holds_a_record_back_only_inside_the_gap() {
        let gap = Duration::from_micros(1_000);
        let t0 = Instant::now();
        let mut part = Part::default();
        // Never sent: a lone command leaves at once.
        assert_eq!(part.gap_left(gap, t0), None);
        part.last_sent = Some(t0);
        assert_eq!(part.gap_left(gap, t0), Some(gap));
        assert_eq!(
            part.gap_left(gap, t0 + Duration::from_micros(400)),
            Some(Duration::from_micros(600))
        );
        // The gap is over: the next command leaves at once.
        assert_eq!(part.gap_left(gap, t0 + gap), None);
        assert_eq!(part.gap_left(gap, t0 + Duration::from_millis(5)), None);
        // No gap: never held back.
        assert_eq!(part.gap_left(Duration::ZERO, t0), None);
    }

    #[test]
    fn the_gap_is_never_longer_than_the_wait() {
        use flashsale_runtime::kafka::{producer_config, Delivery, KafkaHealth};
        // A client needs no broker to be made (nothing is sent here).
        let producer: FutureProducer<QuietContext> = producer_config(
            "127.0.0.1:1",
            "batcher-test",
            0,
            Delivery::Within(Duration::from_secs(1)),
        )
        .create_with_context(QuietContext::new(KafkaHealth::new("test", "127.0.0.1:1")))
        .expect("a producer");
        let limits = BatchLimits {
            max_commands: 10,
            max_bytes: 1_000,
            max_wait: Duration::from_micros(300),
            min_gap: Duration::from_micros(2_000),
        };
        let b = Batcher::new(producer, "t".into(), 1, limits);
        assert_eq!(b.limits.min_gap, Duration::from_micros(300));
        assert_eq!(b.limits.max_wait, Duration::from_micros(300));
        assert_eq!(
            BatchLimits::default().min_gap,
            Duration::from_micros(DEFAULT_BATCH_GAP_US)
        );
    }
}
