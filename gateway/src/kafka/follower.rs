//! The follower thread: this gateway's `replies` partition and every `events`
//! partition, read by one consumer into the read model and the waiting requests (see
//! [`super`]).

use crate::dispatch::Pending;
use crate::kafka_reads::{LogStatus, Progress};
use crate::readmodel::{Mark, ReadModel};
use crate::snapshot::{self, Snapshots, Trigger};
use anyhow::Context;
use flashsale_proto::*;
use flashsale_runtime::kafka::{
    consumer_config, record_epoch, watermarks, KafkaHealth, QuietContext, STATS_INTERVAL_MS,
};
use flashsale_runtime::kafka_id::{self, TopicIdentity};
use flashsale_runtime::patience::QUIET_EVERY;
use flashsale_runtime::ratelimit::{similarity_key, LogLimiter};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Replies parked until the read model catches up; past this, the oldest are dropped
/// (their requests answer 503 and are retried).
const MAX_PARKED: usize = 100_000;

/// How often the follower asks the broker whether its topics are still the ones it
/// started with (see the module docs of [`super`]).
pub const IDENTITY_EVERY: Duration = Duration::from_secs(5);
/// At most one extra identity check per this, however many fenced outputs arrive.
const IDENTITY_MIN_GAP: Duration = Duration::from_secs(1);
/// Longest one identity check waits for a broker.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(2);

/// The follower thread: replies of one gateway + all events → read model + waiters.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").finish()
    }
}

pub struct FollowerOptions {
    pub brokers: String,
    pub topics: Topics,
    pub gateway_id: u32,
    pub partitions: u32,
    pub replies_partitions: u32,
    /// Shared with the gateway's [`KafkaBus`]: the follower's statistics say when the
    /// broker is back.
    pub health: Arc<KafkaHealth>,
    /// Read-model snapshots of this log: start from the newest valid one, and write
    /// new ones per its policy. `None`: replay `events` from the start, write none.
    pub snapshots: Option<Snapshots>,
    /// Shared with the bus and the reads: set while the topics are not the ones this
    /// gateway started with.
    pub log: Arc<LogStatus>,
    /// Shared with the reads: how far each events partition was read.
    pub progress: Arc<Progress>,
    /// Follow recreated topics by itself (`--adopt-new-topics`) rather than wait for
    /// the operator.
    pub adopt_new_topics: bool,
}

impl Follower {
    /// Assigns the consumer (replies from their current end; events from the newest
    /// valid read-model snapshot, else from the start) and starts the thread. `ready`
    /// turns true once the read model holds every event that existed at start.
    pub fn start(
        opts: FollowerOptions,
        read: Arc<ReadModel>,
        pending: Arc<Pending>,
        ready: Arc<AtomicBool>,
    ) -> anyhow::Result<Follower> {
        anyhow::ensure!(
            opts.gateway_id < opts.replies_partitions,
            "--gateway-id {} has no partition in {} ({} partitions: ids 0-{}); add partitions with `flashsale topics grow --replies-partitions N` (running deployments too)",
            opts.gateway_id,
            opts.topics.replies,
            opts.replies_partitions,
            opts.replies_partitions - 1
        );
        let consumer: BaseConsumer<QuietContext> = consumer_config(
            &opts.brokers,
            &format!("flashsale-gateway-{}", opts.gateway_id),
        )
        // No group: an assigned consumer that commits nothing. librdkafka wants an
        // id all the same.
        .set(
            "group.id",
            format!("flashsale-gateway-follower-{}", opts.gateway_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.error.backoff.ms", "50")
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .create_with_context(QuietContext::new(opts.health.clone()))
        .context("cannot create the Kafka consumer")?;
        // Replies: from the end as it is now, resolved here (not lazily at the first
        // fetch) so that no reply to a request sent after this point is skipped.
        let (_, replies_end) = watermarks(&consumer, &opts.topics.replies, opts.gateway_id as i32)
            .with_context(|| {
                format!(
                    "cannot read the end of {} partition {}",
                    opts.topics.replies, opts.gateway_id
                )
            })?;
        let mut targets = Vec::with_capacity(opts.partitions as usize);
        let mut bounds = Vec::with_capacity(opts.partitions as usize);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &opts.topics.replies,
            opts.gateway_id as i32,
            Offset::Offset(replies_end),
        )?;
        for p in 0..opts.partitions as i32 {
            let (low, high) = watermarks(&consumer, &opts.topics.events, p).with_context(|| {
                format!(
                    "cannot read the offsets of {} partition {p}",
                    opts.topics.events
                )
            })?;
            targets.push(high);
            bounds.push((low.max(0) as u64, high.max(0) as u64));
        }
        let starts = start_from_snapshot(&opts, &read, &bounds);
        for (p, start) in starts.iter().enumerate() {
            tpl.add_partition_offset(&opts.topics.events, p as i32, Offset::Offset(*start))?;
            opts.progress.set(p as u32, *start);
        }
        // The log this gateway serves: the three topics as they are now.
        let names = topic_names(&opts.topics);
        let expected: Vec<TopicIdentity> = names
            .iter()
            .map(|t| kafka_id::topic_identity(&opts.brokers, t, IDENTITY_TIMEOUT))
            .collect::<anyhow::Result<_>>()
            .context("cannot read the topics' ids")?;
        let trigger = match &opts.snapshots {
            Some(s) if !s.policy.never() => Some(Trigger::new(
                snapshot::Writer::start(read.clone(), s.store.clone())
                    .context("cannot start the read-model snapshot thread")?,
                s.policy,
            )),
            _ => None,
        };
        consumer
            .assign(&tpl)
            .context("cannot assign the follower's partitions")?;
        let stop = Arc::new(AtomicBool::new(false));
        let watch = Arc::new(Watch::default());
        let watcher = {
            let (watch, stop, brokers) = (watch.clone(), stop.clone(), opts.brokers.clone());
            std::thread::Builder::new()
                .name(format!("kafka-topic-ids-{}", opts.gateway_id))
                .spawn(move || watch_ids(&brokers, &names, &watch, &stop))
                .context("cannot start the topic-id thread")?
        };
        let state = FollowerState {
            brokers: opts.brokers.clone(),
            gateway_id: opts.gateway_id,
            partitions: opts.partitions,
            expected,
            watch,
            seen_generation: 0,
            announced: None,
            log: opts.log.clone(),
            progress: opts.progress.clone(),
            adopt_new_topics: opts.adopt_new_topics,
            topics: opts.topics,
            read,
            pending,
            parked: vec![BTreeMap::new(); opts.partitions as usize],
            parked_count: 0,
            positions: starts,
            targets,
            ready,
            started: Instant::now(),
            trigger,
            replayed: 0,
            event_fence: EpochFence::default(),
            reply_fence: EpochFence::default(),
            fence_lines: LogLimiter::new(QUIET_EVERY),
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-follower-{}", opts.gateway_id))
            .spawn(move || follow(consumer, state, stop2, opts.health))
            .context("cannot start the follower thread")?;
        Ok(Follower {
            stop,
            thread: Some(thread),
            watcher: Some(watcher),
        })
    }

    /// Stops the threads (blocking, bounded by one poll and one identity check).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

struct FollowerState {
    brokers: String,
    gateway_id: u32,
    partitions: u32,
    /// The topics of the log this gateway serves (commands, events, replies).
    expected: Vec<TopicIdentity>,
    watch: Arc<Watch>,
    seen_generation: u64,
    /// The ERROR line said last (said once per situation).
    announced: Option<String>,
    log: Arc<LogStatus>,
    progress: Arc<Progress>,
    adopt_new_topics: bool,
    topics: Topics,
    read: Arc<ReadModel>,
    pending: Arc<Pending>,
    /// Per command partition: replies waiting for the read model, by (offset, request).
    parked: Vec<BTreeMap<(u64, RequestId), ReplyRecord>>,
    parked_count: usize,
    /// Next events offset to read per partition.
    positions: Vec<i64>,
    /// Events end offsets at start; ready once every position reached them.
    targets: Vec<i64>,
    ready: Arc<AtomicBool>,
    started: Instant,
    /// Read-model snapshots, when this gateway writes them.
    trigger: Option<Trigger>,
    /// Event records read before the read model caught up (the start-up replay).
    replayed: u64,
    /// Highest owner epoch per command partition, in `events` and in this gateway's
    /// `replies` partition (each an ordered stream of its own): outputs of an older
    /// owner that arrive after a newer one's are dropped.
    event_fence: EpochFence,
    reply_fence: EpochFence,
    fence_lines: LogLimiter,
}

fn follow(
    consumer: BaseConsumer<QuietContext>,
    mut st: FollowerState,
    stop: Arc<AtomicBool>,
    health: Arc<KafkaHealth>,
) {
    let mut last_sweep = Instant::now();
    let lines = LogLimiter::new(QUIET_EVERY);
    st.check_ready();
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            // A lost connection: the health's lines tell it.
            Some(Err(e)) if flashsale_runtime::kafka::is_connection_error(&e) => {}
            Some(Err(e)) => {
                // Rate-limited, and left to the outage's own lines while one lasts.
                let text = e.to_string();
                if health.is_reachable() {
                    if let Some(left_out) = lines.check(&similarity_key(&text)) {
                        tracing::warn!(error = %text, similar_left_out = left_out, "Kafka follower: consume error");
                    }
                }
            }
            Some(Ok(m)) => {
                // Nothing is applied while the log this gateway served is gone.
                if st.log.is_stale() {
                    continue;
                }
                if st.went_back(m.topic(), m.partition(), m.offset()) {
                    // A topic that starts again at a lower offset: recreated? Nothing
                    // of it is applied before the broker says.
                    st.check_ids_now(&consumer);
                    if st.log.is_stale() || st.went_back(m.topic(), m.partition(), m.offset()) {
                        continue;
                    }
                }
                let Some(payload) = m.payload() else { continue };
                let epoch = record_epoch(&m);
                if m.topic() == st.topics.events {
                    st.on_event(m.partition(), m.offset(), payload, epoch);
                } else {
                    st.on_replies(payload, epoch);
                }
            }
        }
        let generation = st.watch.generation.load(Ordering::Acquire);
        if generation != st.seen_generation {
            st.seen_generation = generation;
            let now = st.watch.observed.lock().ok().and_then(|o| o.clone());
            if let Some(now) = now {
                st.on_ids(&consumer, &now);
            }
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            st.sweep();
        }
    }
}

impl FollowerState {
    fn on_event(
        &mut self,
        kafka_partition: i32,
        kafka_offset: i64,
        payload: &[u8],
        epoch: Option<u64>,
    ) {
        if let Some(p) = self.positions.get_mut(kafka_partition as usize) {
            *p = kafka_offset + 1;
        }
        // One Kafka record holds the events of one applied batch of commands of this
        // partition (events partition = command partition), all of one owner epoch.
        let mut recs: Vec<EventRecord> = Vec::new();
        if let Err(e) = decode_many(payload, &mut recs) {
            tracing::warn!(partition = kafka_partition, offset = kafka_offset, error = %e, "undecodable event record skipped");
        }
        let partition = kafka_partition as u32;
        if !recs.is_empty() && !self.event_fence.admit(partition, epoch) {
            self.fenced("events", partition, epoch, self.event_fence.dropped());
        } else {
            for rec in &recs {
                self.read.apply(rec);
            }
            if let Some(last) = recs.last() {
                self.release(last.partition);
            }
        }
        // Only now: a read waiting for this offset ([`Progress`]) must find the
        // record's events applied when it wakes (read-your-writes across gateways).
        self.progress.set(kafka_partition as u32, kafka_offset + 1);
        if let Some(t) = &mut self.trigger {
            t.applied();
        }
        if !self.ready.load(Ordering::Relaxed) {
            self.replayed += 1;
            self.check_ready();
        } else {
            self.maybe_snapshot(false);
        }
    }

    /// Offers a snapshot to the writer when one is due (never during the start-up
    /// replay, once at its end if it was long). Cheap: reads a few integers.
    fn maybe_snapshot(&mut self, caught_up_now: bool) {
        let Some(t) = &mut self.trigger else { return };
        if !t.due(caught_up_now) {
            return;
        }
        let marks = self
            .positions
            .iter()
            .enumerate()
            .map(|(p, pos)| Mark {
                events_offset: (*pos).max(0) as u64,
                next_command_offset: self.read.applied_through(p as u32),
            })
            .collect();
        t.offer(marks);
    }

    fn check_ready(&mut self) {
        let caught_up = self
            .positions
            .iter()
            .zip(&self.targets)
            .all(|(pos, target)| *target <= 0 || *pos >= *target);
        if caught_up {
            tracing::info!(
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                events = ?self.targets,
                replayed = self.replayed,
                "read model caught up with the events topic"
            );
            self.ready.store(true, Ordering::Release);
            self.maybe_snapshot(true);
        }
    }

    /// Says (rate-limited) that an output of a replaced (fenced) engine was dropped, and
    /// has the topics' ids checked soon (a recreated topic's owner epochs start low).
    fn fenced(&self, topic: &str, partition: u32, epoch: Option<u64>, dropped: u64) {
        self.watch.check_now.store(true, Ordering::Release);
        if self.fence_lines.check(topic).is_some() {
            tracing::info!(
                topic,
                partition,
                epoch,
                dropped_so_far = dropped,
                "dropped an output of a replaced engine (older owner epoch: fenced)"
            );
        }
    }

    /// One Kafka record holds the replies of one applied batch of one command
    /// partition for this gateway, all of one owner epoch.
    fn on_replies(&mut self, payload: &[u8], epoch: Option<u64>) {
        let mut recs: Vec<ReplyRecord> = Vec::new();
        if let Err(e) = decode_many(payload, &mut recs) {
            tracing::warn!(error = %e, "undecodable reply record skipped");
        }
        let Some(partition) = recs.first().map(|r| r.partition) else {
            return;
        };
        if !self.reply_fence.admit(partition, epoch) {
            self.fenced("replies", partition, epoch, self.reply_fence.dropped());
            return;
        }
        for rec in recs {
            self.on_reply(rec);
        }
    }

    fn on_reply(&mut self, rec: ReplyRecord) {
        if !self.pending.is_waiting(&rec.request_id) {
            return;
        }
        if rec.offset < self.read.applied_through(rec.partition) {
            self.pending.complete(rec);
            return;
        }
        if rec.partition as usize >= self.parked.len() {
            self.pending.complete(rec);
            return;
        }
        if self.parked_count >= MAX_PARKED {
            // Bounded: the oldest waiter of the fullest partition loses (503, retried).
            if let Some(fullest) = self.parked.iter_mut().max_by_key(|m| m.len()) {
                if fullest.pop_first().is_some() {
                    self.parked_count -= 1;
                }
            }
        }
        if self.parked[rec.partition as usize]
            .insert((rec.offset, rec.request_id), rec)
            .is_none()
        {
            self.parked_count += 1;
        }
    }

    /// Hands over the replies of `partition` the read model has caught up with.
    fn release(&mut self, partition: u32) {
        let through = self.read.applied_through(partition);
        let Some(parked) = self.parked.get_mut(partition as usize) else {
            return;
        };
        while let Some(entry) = parked.first_entry() {
            if entry.key().0 >= through {
                break;
            }
            let rec = entry.remove();
            self.parked_count -= 1;
            self.pending.complete(rec);
        }
    }

    /// Drops parked replies nobody waits for any more (and writes a snapshot due by
    /// time while no events arrive).
    fn sweep(&mut self) {
        if self.ready.load(Ordering::Relaxed) {
            self.maybe_snapshot(false);
        }
        for m in &mut self.parked {
            m.retain(|(_, id), _| self.pending.is_waiting(id));
        }
        self.parked_count = self.parked.iter().map(|m| m.len()).sum();
    }
}

fn topic_names(t: &Topics) -> Vec<String> {
    vec![t.commands.clone(), t.events.clone(), t.replies.clone()]
}

/// The topic-id thread's findings: the identities of commands, events and replies as
/// the broker gave them last (`None`: the topic does not exist).
#[derive(Default)]
struct Watch {
    observed: Mutex<Option<Vec<Option<TopicIdentity>>>>,
    /// Bumped at every answer.
    generation: AtomicU64,
    /// Set by the follower: check now rather than at the next period.
    check_now: AtomicBool,
}

/// Asks the broker for the topics' ids every [`IDENTITY_EVERY`], or sooner when asked
/// (at most once per [`IDENTITY_MIN_GAP`]). Outside the follower thread: a broker that
/// does not answer must not hold the read model back.
fn watch_ids(brokers: &str, names: &[String], watch: &Watch, stop: &AtomicBool) {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        let due = last.elapsed() >= IDENTITY_EVERY
            || (last.elapsed() >= IDENTITY_MIN_GAP && watch.check_now.load(Ordering::Acquire));
        if due {
            watch.check_now.store(false, Ordering::Release);
            last = Instant::now();
            // No answer (an outage): no verdict; the next period asks again.
            if let Ok(now) = kafka_id::lookup_all(brokers, &names, IDENTITY_TIMEOUT) {
                if let Ok(mut o) = watch.observed.lock() {
                    *o = Some(now);
                }
                watch.generation.fetch_add(1, Ordering::AcqRel);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl FollowerState {
    /// True when `offset` lies below what was read of that partition already (a topic
    /// that starts again: recreated?).
    fn went_back(&self, topic: &str, partition: i32, offset: i64) -> bool {
        topic == self.topics.events
            && self
                .positions
                .get(partition as usize)
                .is_some_and(|p| offset < *p)
    }

    /// Asks the broker now, in this thread (rare: offsets went backwards).
    fn check_ids_now(&mut self, consumer: &BaseConsumer<QuietContext>) {
        let names = topic_names(&self.topics);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        if let Ok(now) = kafka_id::lookup_all(&self.brokers, &names, IDENTITY_TIMEOUT) {
            self.on_ids(consumer, &now);
        }
    }

    /// Compares the topics' ids now with the ones this gateway serves; see the module
    /// docs for what it does when they differ.
    fn on_ids(&mut self, consumer: &BaseConsumer<QuietContext>, now: &[Option<TopicIdentity>]) {
        let changes = kafka_id::changes(&self.expected, now);
        if changes.is_empty() {
            return;
        }
        let what = kafka_id::describe(&changes);
        let renewed = |t: &str| changes.iter().any(|c| c.topic == t && c.new_id.is_some());
        let complete = renewed(&self.topics.commands)
            && renewed(&self.topics.events)
            && now.iter().all(Option::is_some);
        let next = if !self.adopt_new_topics {
            "restart this gateway to serve the new topics, or run it with --adopt-new-topics to follow them by itself".to_string()
        } else if complete {
            "adopting the new topics (--adopt-new-topics)".to_string()
        } else {
            format!(
                "waiting until {} and {} both exist under new ids (flashsale topics create) to adopt them",
                self.topics.commands, self.topics.events
            )
        };
        let reason = format!("{what}: this gateway serves nothing of the old log; {next}");
        if self.announced.as_deref() != Some(what.as_str()) {
            tracing::error!(
                topics = %changes.iter().map(|c| c.topic.as_str()).collect::<Vec<_>>().join(","),
                "{reason}"
            );
            self.announced = Some(what);
        }
        if !self.log.is_stale() {
            // Stop using the old log's state: nothing of it is served any more.
            self.read.clear();
            for m in &mut self.parked {
                m.clear();
            }
            self.parked_count = 0;
            if self.trigger.take().is_some() {
                tracing::info!(
                    "read-model snapshots stop until this gateway restarts (they are kept per log)"
                );
            }
        }
        self.log.set_stale(Some(reason));
        if self.adopt_new_topics && complete {
            match self.adopt(consumer, now) {
                Ok(()) => {}
                Err(e) => tracing::error!(
                    error = %format!("{e:#}"),
                    "cannot adopt the new topics; restart this gateway"
                ),
            }
        }
    }

    /// Follows the new log from its start: replies from their end, every events
    /// partition from its first offset; ready again once caught up.
    fn adopt(
        &mut self,
        consumer: &BaseConsumer<QuietContext>,
        now: &[Option<TopicIdentity>],
    ) -> anyhow::Result<()> {
        let (partitions, replies_partitions) =
            flashsale_runtime::kafka::check(&self.brokers, &self.topics)?;
        anyhow::ensure!(
            partitions == self.partitions && self.gateway_id < replies_partitions,
            "the new topics have {partitions} partitions ({replies_partitions} for replies), this gateway serves {} (gateway id {})",
            self.partitions,
            self.gateway_id
        );
        let mut tpl = TopicPartitionList::new();
        let (_, replies_end) = watermarks(consumer, &self.topics.replies, self.gateway_id as i32)?;
        tpl.add_partition_offset(
            &self.topics.replies,
            self.gateway_id as i32,
            Offset::Offset(replies_end),
        )?;
        let mut positions = Vec::with_capacity(self.partitions as usize);
        let mut targets = Vec::with_capacity(self.partitions as usize);
        for p in 0..self.partitions as i32 {
            let (low, high) = watermarks(consumer, &self.topics.events, p)?;
            tpl.add_partition_offset(&self.topics.events, p, Offset::Offset(low))?;
            positions.push(low);
            targets.push(high);
        }
        consumer.assign(&tpl)?;
        self.read.clear();
        self.event_fence = EpochFence::default();
        self.reply_fence = EpochFence::default();
        for (p, pos) in positions.iter().enumerate() {
            self.progress.set(p as u32, *pos);
        }
        self.positions = positions;
        self.targets = targets;
        self.ready.store(false, Ordering::Release);
        self.started = Instant::now();
        self.replayed = 0;
        self.expected = now.iter().flatten().cloned().collect();
        self.announced = None;
        self.log.set_stale(None);
        tracing::warn!(
            log = %self.expected.iter().map(|t| t.log_id()).collect::<Vec<_>>().join(","),
            "adopted the new topics: the read model is rebuilt from the new events topic; /ready turns 200 once it caught up"
        );
        self.check_ready();
        Ok(())
    }
}

/// Loads the newest valid read-model snapshot into `read` (a new, empty model) and
/// returns where to read each events partition from: the snapshot's offsets, or each
/// partition's start. Says in one line what it started from and how much is left to
/// replay.
fn start_from_snapshot(
    opts: &FollowerOptions,
    read: &ReadModel,
    bounds: &[(u64, u64)],
) -> Vec<i64> {
    let from_start: Vec<i64> = bounds.iter().map(|(low, _)| *low as i64).collect();
    let to_replay = |starts: &[i64]| -> u64 {
        bounds
            .iter()
            .zip(starts)
            .map(|((_, high), s)| high.saturating_sub((*s).max(0) as u64))
            .sum()
    };
    let Some(snaps) = &opts.snapshots else {
        return from_start;
    };
    let t = Instant::now();
    let (found, refused) = snapshot::load_newest(snaps.store.as_ref(), opts.partitions, bounds);
    match found {
        Some((info, image)) => {
            read.restore(&image);
            let starts: Vec<i64> = image
                .marks
                .iter()
                .zip(bounds)
                .map(|(m, (low, _))| m.events_offset.max(*low) as i64)
                .collect();
            tracing::info!(
                snapshot = %info.id(),
                covered = info.covered,
                bytes = info.size_bytes,
                reservations = image.reservations.len(),
                load_ms = t.elapsed().as_millis() as u64,
                skipped = refused.len(),
                to_replay = to_replay(&starts),
                "read model starts from a snapshot"
            );
            starts
        }
        None => {
            tracing::info!(
                skipped = refused.len(),
                to_replay = to_replay(&from_start),
                store = %snaps.store.describe(),
                "read model starts from the beginning of the events topic (no usable snapshot)"
            );
            from_start
        }
    }
}
