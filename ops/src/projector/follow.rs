//! [`run_projector`]: the Kafka loop around [`Projector`]. Reads every partition of the
//! events topic from the positions stored in Postgres (not from consumer-group
//! commits: the position moves in the same transaction as the rows, which is what
//! makes the projection exactly once), gathers what is ready into a batch, and applies
//! it, retrying with backoff while Postgres is away. Nothing is read past a batch that
//! has not landed, so an outage loses nothing and doubles nothing.
//!
//! A broker outage is ridden out: librdkafka reconnects by itself, the outage is told
//! in a few lines ([`KafkaHealth`]) and read errors meanwhile are rate-limited.
//!
//! Several projectors may run at once (one per `serve --kafka` node): each applies
//! every partition, and the offset rows they lock make all but the first copy a no-op.

use super::{Projector, ProjectorConfig};
use flashsale_runtime::kafka::{KafkaHealth, QuietContext, STATS_INTERVAL_MS};
use flashsale_runtime::patience::{Quiet, QUIET_EVERY};
use flashsale_runtime::pg::{PgError, Pool, Retry};
use flashsale_runtime::ratelimit::{similarity_key, LogLimiter};
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the topic's partition count is checked again (partitions can be added).
const METADATA_EVERY: Duration = Duration::from_secs(30);
/// How often progress is logged while events flow.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Follows the events topic and projects it into Postgres until `shutdown` resolves.
/// Returns an error only for what retrying cannot fix (a bad Kafka config, or a
/// Postgres error that is not about the connection).
pub async fn run_projector(
    config: ProjectorConfig,
    pool: Pool,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    // Which log: offsets and positions are those of this events topic as created
    // (name + Kafka's topic id), so a recreated topic or another deployment sharing the
    // database never makes the projector skip records. Waits for the broker.
    let log = {
        let (b, t) = (config.kafka_bootstrap.clone(), config.events_topic.clone());
        let what = format!(
            "Kafka at {} (topic {})",
            config.kafka_bootstrap, config.events_topic
        );
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            id = flashsale_runtime::patience::retry_forever(
                &what,
                move || flashsale_runtime::kafka_id::topic_identity(&b, &t, flashsale_runtime::kafka::ADMIN_TIMEOUT),
            ) => id,
        }
    };
    tracing::info!(log = %log.log_id(), "projecting log {log}");
    let projector = Projector::new(pool, config.events_topic.clone()).with_log_id(log.log_id());
    let health = KafkaHealth::new("the projector", config.kafka_bootstrap.clone());
    let lines = LogLimiter::new(QUIET_EVERY);
    let consumer: Arc<StreamConsumer<QuietContext>> = Arc::new(
        flashsale_runtime::kafka::consumer_config(&config.kafka_bootstrap, "flashsale-projector")
            // Needed by librdkafka; never used to commit (positions live in Postgres).
            .set("group.id", "flashsale-projector")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .create_with_context(QuietContext::new(health.clone()))
            .map_err(|e| anyhow::anyhow!("cannot create the projector's Kafka consumer: {e}"))?,
    );
    let topic = config.events_topic.clone();

    // Where to start: the positions stored with the rows.
    let stored = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        r = Retry::FOREVER.run("read projector positions", || projector.positions()) => r?,
    };
    let Some(n) = wait_for_partitions(&consumer, &topic, &mut shutdown).await else {
        return Ok(());
    };
    assign(&consumer, &topic, 0..n, &stored)?;
    let mut known = n;
    tracing::info!(
        topic,
        partitions = n,
        resumed = stored.len(),
        "projector following the events topic"
    );

    let mut stream = consumer.stream();
    let mut last_metadata = Instant::now();
    let mut last_progress = Instant::now();
    let (mut records_total, mut orders_total, mut skipped_total, mut undecodable_total) =
        (0u64, 0u64, 0u64, 0u64);
    let max_batch = config.max_batch.max(1);
    // Outputs of a replaced (paused, then resumed) engine that arrive after its
    // successor's are dropped by owner epoch (see `flashsale_proto::EPOCH_HEADER`).
    let mut fence = flashsale_proto::EpochFence::default();
    loop {
        let first = tokio::select! {
            _ = &mut shutdown => break,
            m = stream.next() => m,
            // Wake up now and then to look for new partitions even when idle.
            _ = tokio::time::sleep(METADATA_EVERY) => None,
        };
        let mut records = Vec::new();
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        if let Some(m) = first {
            let read = Read {
                health: &health,
                lines: &lines,
            };
            read.take(
                m,
                &mut records,
                &mut positions,
                &mut undecodable_total,
                &mut fence,
            );
            // Whatever else is already fetched joins the batch; never wait for more.
            while records.len() < max_batch {
                match stream.next().now_or_never() {
                    Some(Some(m)) => read.take(
                        m,
                        &mut records,
                        &mut positions,
                        &mut undecodable_total,
                        &mut fence,
                    ),
                    _ => break,
                }
            }
        }
        if !positions.is_empty() {
            let positions: Vec<(i32, i64)> = positions.into_iter().collect();
            let report = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = Retry::FOREVER.run("project events", || projector.apply_at(&records, &positions)) => r.map_err(permanent)?,
            };
            records_total += report.applied as u64;
            orders_total += report.orders_inserted;
            if let Some(m) = &config.metrics {
                m.projected(report.applied as u64, report.orders_inserted);
            }
            skipped_total += report.skipped as u64;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY && records_total > 0 {
            tracing::info!(
                records = records_total,
                orders = orders_total,
                skipped = skipped_total,
                undecodable = undecodable_total,
                "projector progress"
            );
            last_progress = Instant::now();
        }
        if last_metadata.elapsed() >= METADATA_EVERY {
            last_metadata = Instant::now();
            if let Ok(n) = partition_count(&consumer, &topic).await {
                if n > known {
                    let stored = Retry::FOREVER
                        .run("read projector positions", || projector.positions())
                        .await?;
                    // Everything applied so far is stored, so re-assigning every partition
                    // from the stored positions resumes exactly where this loop is.
                    assign(&consumer, &topic, 0..n, &stored)?;
                    tracing::info!(
                        topic,
                        from = known,
                        to = n,
                        "events topic grew; following the new partitions"
                    );
                    known = n;
                }
            }
        }
    }
    tracing::info!(
        records = records_total,
        orders = orders_total,
        skipped = skipped_total,
        "projector stopped"
    );
    Ok(())
}

/// Where read errors go: rate-limited, and none while an announced outage lasts.
struct Read<'a> {
    health: &'a KafkaHealth,
    lines: &'a LogLimiter,
}

impl Read<'_> {
    /// Adds one message to the batch: its record (if it decodes) and its partition's next
    /// position (always: an undecodable record is skipped, not re-read forever).
    fn take(
        &self,
        m: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
        records: &mut Vec<flashsale_proto::EventRecord>,
        positions: &mut BTreeMap<i32, i64>,
        undecodable: &mut u64,
        fence: &mut flashsale_proto::EpochFence,
    ) {
        match m {
            Ok(msg) => {
                let next = positions.entry(msg.partition()).or_insert(0);
                *next = (*next).max(msg.offset() + 1);
                let epoch = msg.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == flashsale_proto::EPOCH_HEADER)
                        .and_then(|h| h.value)
                        .and_then(flashsale_proto::parse_epoch)
                });
                // One Kafka record holds the events of one applied batch of commands of
                // this partition (events partition = command partition).
                let mut batch: Vec<flashsale_proto::EventRecord> = Vec::new();
                match msg
                    .payload()
                    .map(|bytes| flashsale_proto::decode_many(bytes, &mut batch))
                {
                    Some(Ok(())) if !fence.admit(msg.partition() as u32, epoch) => {
                        if self.lines.check("fenced").is_some() {
                            tracing::info!(
                                partition = msg.partition(),
                                epoch,
                                dropped_so_far = fence.dropped(),
                                "dropped an event record of a replaced engine (older owner epoch: fenced)"
                            );
                        }
                    }
                    Some(Ok(())) => records.append(&mut batch),
                    Some(Err(e)) => {
                        *undecodable += 1;
                        tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "undecodable event record skipped");
                    }
                    None => *undecodable += 1,
                }
            }
            Err(e) if flashsale_runtime::kafka::is_connection_error(&e) => {}
            Err(e) => {
                let text = e.to_string();
                if self.health.is_reachable() {
                    if let Some(left_out) = self.lines.check(&similarity_key(&text)) {
                        tracing::warn!(error = %text, similar_left_out = left_out, "events topic read error; librdkafka retries");
                    }
                }
            }
        }
    }
}

fn permanent(e: PgError) -> anyhow::Error {
    anyhow::anyhow!("the projector stopped on an error that retrying cannot fix: {e}")
}

async fn partition_count(
    consumer: &Arc<StreamConsumer<QuietContext>>,
    topic: &str,
) -> anyhow::Result<i32> {
    let (c, t) = (consumer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let md = c.fetch_metadata(Some(&t), Duration::from_secs(5))?;
        let n = md
            .topics()
            .iter()
            .find(|x| x.name() == t)
            .map(|x| x.partitions().len())
            .unwrap_or(0);
        Ok::<_, rdkafka::error::KafkaError>(n as i32)
    })
    .await?
    .map_err(Into::into)
}

/// Waits (with backoff, until `shutdown`) until the topic exists; its partition count.
async fn wait_for_partitions(
    consumer: &Arc<StreamConsumer<QuietContext>>,
    topic: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<i32> {
    let mut delay = Duration::from_millis(200);
    let mut quiet = Quiet::new(format!("the events topic {topic}"));
    loop {
        match partition_count(consumer, topic).await {
            Ok(n) if n > 0 => {
                quiet.succeeded();
                return Some(n);
            }
            Ok(_) => quiet.failed(&"it does not exist yet (flashsale topics create)"),
            Err(e) => quiet.failed(&format!("cannot read its metadata: {e}")),
        }
        tokio::select! {
            _ = &mut *shutdown => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn tpl(
    topic: &str,
    range: std::ops::Range<i32>,
    stored: &HashMap<i32, i64>,
) -> anyhow::Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for p in range {
        let offset = stored
            .get(&p)
            .map_or(Offset::Beginning, |&o| Offset::Offset(o));
        list.add_partition_offset(topic, p, offset)?;
    }
    Ok(list)
}

fn assign(
    consumer: &StreamConsumer<QuietContext>,
    topic: &str,
    range: std::ops::Range<i32>,
    stored: &HashMap<i32, i64>,
) -> anyhow::Result<()> {
    consumer.assign(&tpl(topic, range, stored)?)?;
    Ok(())
}
