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
//!
//! **Topics recreated.** The projector serves one log: the events topic (and the
//! commands topic whose offsets its records carry) as created once. It asks the broker
//! for their ids every [`IDENTITY_EVERY`], and before applying a batch in which a
//! partition's offsets went backwards or an output was fenced (signs of a new topic).
//! When one was deleted or recreated it applies nothing more of what it reads, says so
//! in one ERROR line naming each topic with its old and new id, and waits for the
//! operator (a restart projects the new log); with `--adopt-new-topics` it projects
//! the new log from its start, into rows of that log, once both topics exist again.

use super::{Projector, ProjectorConfig};
use flashsale_runtime::kafka::{KafkaHealth, QuietContext, STATS_INTERVAL_MS};
use flashsale_runtime::patience::{Quiet, QUIET_EVERY};
use flashsale_runtime::pg::{PgError, Pool, Retry};
use flashsale_runtime::ratelimit::{similarity_key, LogLimiter};
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the topic's partition count is checked again (partitions can be added).
const METADATA_EVERY: Duration = Duration::from_secs(30);
/// How often progress is logged while events flow.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// How often the topics' ids are checked (see the module docs).
const IDENTITY_EVERY: Duration = Duration::from_secs(5);
/// Longest one identity check waits for a broker.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(2);

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
    let mut projector =
        Projector::new(pool.clone(), config.events_topic.clone()).with_log_id(log.log_id());
    // The commands topic's id too (its offsets are in every record); no answer yet is
    // not fatal: it is watched from the first answer on.
    let commands_topic = config.commands_topic();
    let mut watch = IdWatch {
        brokers: config.kafka_bootstrap.clone(),
        names: vec![config.events_topic.clone(), commands_topic.clone()],
        expected: vec![log.clone()],
        announced: None,
        stale: false,
        adopt: config.adopt_new_topics,
        last: Instant::now(),
    };
    if let Ok(Some(c)) = watch.lookup_one(&commands_topic).await {
        watch.expected.push(c);
    }
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
    // The next offset per events partition, to see offsets going backwards.
    let mut read_to: HashMap<i32, i64> = stored.clone();
    let mut suspect = false;
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
            // Wake up now and then to look for new partitions and topic ids even when idle.
            _ = tokio::time::sleep(IDENTITY_EVERY) => None,
        };
        let mut records = Vec::new();
        let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
        let mut batch_suspect = false;
        if let Some(m) = first {
            let read = Read {
                health: &health,
                lines: &lines,
                suspect: std::cell::Cell::new(false),
                read_to: std::cell::RefCell::new(&mut read_to),
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
            batch_suspect = read.suspect.get();
            suspect |= batch_suspect;
        }
        let mut go_stale = false;
        // Before anything of a batch that looks like a new topic lands, and every
        // IDENTITY_EVERY: is this still the log being projected?
        if suspect || watch.last.elapsed() >= IDENTITY_EVERY || watch.stale {
            suspect = false;
            match watch.check().await {
                Verdict::Same | Verdict::NoAnswer => {}
                Verdict::Stale if watch.stale => continue,
                Verdict::Stale => {
                    // Seen now. A batch without a sign of the new topic was read from
                    // the old one before it went: it still lands, under the old log.
                    go_stale = true;
                    if batch_suspect {
                        records.clear();
                        positions.clear();
                    }
                }
                Verdict::Adopt(new_events) => {
                    projector = Projector::new(pool.clone(), config.events_topic.clone())
                        .with_log_id(new_events.log_id());
                    let stored = Retry::FOREVER
                        .run("read projector positions", || projector.positions())
                        .await?;
                    let Some(n) = wait_for_partitions(&consumer, &topic, &mut shutdown).await
                    else {
                        return Ok(());
                    };
                    assign(&consumer, &topic, 0..n, &stored)?;
                    known = n;
                    read_to = stored;
                    fence = flashsale_proto::EpochFence::default();
                    watch.stale = false;
                    tracing::warn!(
                        log = %new_events.log_id(),
                        partitions = n,
                        "adopted the new topics: projecting the new log from its start"
                    );
                    // What this batch read belongs to the old topic's reading.
                    continue;
                }
            }
        }
        if watch.stale {
            continue;
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
        if go_stale {
            watch.stale = true;
            // Read nothing more of the new topics until adopted or restarted.
            consumer.unassign()?;
            continue;
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
/// Also notes the signs of a recreated topic: offsets going backwards, fenced outputs.
struct Read<'a, 'b> {
    health: &'a KafkaHealth,
    lines: &'a LogLimiter,
    suspect: std::cell::Cell<bool>,
    read_to: std::cell::RefCell<&'b mut HashMap<i32, i64>>,
}

/// What [`IdWatch::check`] found.
enum Verdict {
    Same,
    NoAnswer,
    /// A topic was deleted or recreated: project nothing more (the ERROR line is said).
    Stale,
    /// Recreated, and `--adopt-new-topics`: project the new log (its events topic).
    Adopt(flashsale_runtime::kafka_id::TopicIdentity),
}

/// The identities of the topics being projected, and what to do when they change.
struct IdWatch {
    brokers: String,
    /// Events topic, commands topic.
    names: Vec<String>,
    /// As started with (events first; commands if it answered).
    expected: Vec<flashsale_runtime::kafka_id::TopicIdentity>,
    announced: Option<String>,
    stale: bool,
    adopt: bool,
    last: Instant,
}

impl IdWatch {
    async fn lookup_one(
        &self,
        topic: &str,
    ) -> anyhow::Result<Option<flashsale_runtime::kafka_id::TopicIdentity>> {
        let (b, t) = (self.brokers.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            flashsale_runtime::kafka_id::lookup(&b, &t, IDENTITY_TIMEOUT)
        })
        .await?
    }

    async fn check(&mut self) -> Verdict {
        use flashsale_runtime::kafka_id::{changes, describe, lookup_all};
        self.last = Instant::now();
        let (b, names) = (self.brokers.clone(), self.names.clone());
        let now = match tokio::task::spawn_blocking(move || {
            let n: Vec<&str> = names.iter().map(String::as_str).collect();
            lookup_all(&b, &n, IDENTITY_TIMEOUT)
        })
        .await
        {
            Ok(Ok(now)) => now,
            _ => return Verdict::NoAnswer,
        };
        if self.expected.len() < 2 {
            if let Some(Some(c)) = now.get(1) {
                // The commands topic answers for the first time.
                if !self.stale {
                    self.expected.push(c.clone());
                }
            }
        }
        let changed = changes(&self.expected, &now[..self.expected.len()]);
        if changed.is_empty() {
            return Verdict::Same;
        }
        let what = describe(&changed);
        let renewed = |i: usize| {
            changed
                .iter()
                .any(|c| c.topic == self.names[i] && c.new_id.is_some())
                || self.expected.len() <= i
        };
        let complete = renewed(0) && renewed(1) && now.iter().all(Option::is_some);
        let next = if !self.adopt {
            "restart the projector to project the new topics, or run it with --adopt-new-topics to follow them by itself"
        } else if complete {
            "adopting the new topics (--adopt-new-topics)"
        } else {
            "waiting until the events and commands topics both exist under new ids (flashsale topics create) to adopt them"
        };
        if self.announced.as_deref() != Some(what.as_str()) {
            tracing::error!(
                topics = %changed.iter().map(|c| c.topic.as_str()).collect::<Vec<_>>().join(","),
                "{what}: the projector projects nothing more of the old log; {next}"
            );
            self.announced = Some(what);
        }
        if self.adopt && complete {
            self.expected = now.into_iter().flatten().collect();
            self.announced = None;
            Verdict::Adopt(self.expected[0].clone())
        } else {
            Verdict::Stale
        }
    }
}

impl Read<'_, '_> {
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
                {
                    let mut read_to = self.read_to.borrow_mut();
                    let seen = read_to.entry(msg.partition()).or_insert(0);
                    if msg.offset() < *seen {
                        // Backwards: a topic that starts again (recreated?).
                        self.suspect.set(true);
                    }
                    *seen = msg.offset() + 1;
                }
                let epoch = flashsale_runtime::kafka::record_epoch(&msg);
                // One Kafka record holds the events of one applied batch of commands of
                // this partition (events partition = command partition).
                let mut batch: Vec<flashsale_proto::EventRecord> = Vec::new();
                match msg
                    .payload()
                    .map(|bytes| flashsale_proto::decode_many(bytes, &mut batch))
                {
                    Some(Ok(())) if !fence.admit(msg.partition() as u32, epoch) => {
                        // A new log's owner epochs start low: is it one?
                        self.suspect.set(true);
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
