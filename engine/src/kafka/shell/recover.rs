//! Assignment and recovery: committed offsets, watermarks, the snapshot store (read
//! with a bounded wait: Postgres may be away), claims, and the standby consumer.

use super::*;

impl Shell {
    /// Runs `f` until it succeeds, with backoff and one line per [`QUIET_EVERY`];
    /// `None` once the engine is told to stop.
    pub(super) fn retry<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> rdkafka::error::KafkaResult<T>,
    ) -> Option<T> {
        let mut backoff = Backoff::default();
        let mut failures = 0u64;
        loop {
            match f() {
                Ok(v) => {
                    if failures > 0 {
                        tracing::info!(failures, "read {what} after retrying");
                    }
                    return Some(v);
                }
                Err(e) => {
                    failures += 1;
                    self.warn_repeated(&format!("cannot read {what}; retrying"), &e);
                    let until = Instant::now() + backoff.delay();
                    while Instant::now() < until {
                        if self.stop.load(Ordering::Acquire) {
                            return None;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    /// Recovers every assigned partition and sets where its consumption starts; then
    /// claims them and waits for the claims.
    pub(super) fn assign(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        tpl: &mut TopicPartitionList,
    ) {
        let t = Instant::now();
        let topic = self.opts.topics.commands.clone();
        let parts = partitions_of(tpl, &topic);
        let committed = match self.retry("the committed offsets", || {
            consumer.committed_offsets(tpl.clone(), ADMIN_TIMEOUT)
        }) {
            Some(c) => c,
            None => return,
        };
        let mut from_snapshot = Vec::new();
        // Partitions rebuilt by replaying the whole log (no usable snapshot or copy).
        let mut replayed_from_start = Vec::new();
        let mut claims = Vec::new();
        for &p in &parts {
            let c = match committed.find_partition(&topic, p as i32) {
                Some(e) => self.committed_of_this_log(p, e.offset(), e.metadata()),
                None => 0,
            };
            let (low, high) = match self.retry(&format!("the offsets of partition {p}"), || {
                flashsale_runtime::kafka::watermarks(consumer, &topic, p as i32)
            }) {
                Some((l, h)) => (l.max(0) as u64, h.max(0) as u64),
                None => return, // stopping
            };
            let snapshot = match self.host.snapshot_wanted(p, c, low) {
                None => None,
                Some(above) => {
                    let s = self.load_snapshot(p, c, above, low);
                    if s.is_some() {
                        from_snapshot.push(p);
                    }
                    s
                }
            };
            let mut actions = Vec::new();
            self.host.handle(
                Event::Assigned {
                    partition: p,
                    committed: c,
                    low,
                    high,
                    snapshot,
                },
                &mut actions,
            );
            for a in actions {
                match a {
                    Action::Seek { partition, offset } => {
                        if let Err(e) = tpl.set_partition_offset(
                            &topic,
                            partition as i32,
                            Offset::Offset(offset as i64),
                        ) {
                            self.fail(format!(
                                "cannot set the start offset of partition {partition}: {e}"
                            ));
                        }
                        self.metrics
                            .partition_lag(partition, high.saturating_sub(offset));
                    }
                    Action::Claim { partition } => claims.push(partition),
                    Action::Unfollow { partition } => self.unfollow(partition),
                    Action::Fail { reason } => self.fail(reason),
                    _ => {}
                }
            }
            if self
                .host
                .owned()
                .any(|(q, o)| q == p && o.from == "log start")
            {
                replayed_from_start.push(p);
            }
            if self.host.owns(p) && !from_snapshot.contains(&p) {
                // No snapshot loaded: the age counts from now.
                self.metrics.snapshot_at(p, now_ms());
            }
        }
        self.update_status();
        let epochs = self.claim(&claims);
        tracing::info!(
            owned = ?self.host.owned().map(|(p, _)| p).collect::<Vec<_>>(),
            claimed = ?epochs,
            from_snapshot = ?from_snapshot,
            replayed_from_log_start = ?replayed_from_start,
            catching_up = self.host.catching_up(),
            elapsed_ms = t.elapsed().as_millis() as u64,
            "assignment recovered"
        );
    }

    /// The committed offset of partition `p` if it is of the log the engine serves:
    /// one committed with another topic id as its metadata was committed against a
    /// deleted topic's log (by an engine that had not seen the topic recreated yet) and
    /// says nothing of this one, so the partition is taken as never committed: its
    /// records are applied from the start and their outputs produced. A commit without
    /// metadata (an older engine's) is used as it is.
    fn committed_of_this_log(&self, p: u32, offset: Offset, metadata: &str) -> u64 {
        let c = match offset {
            Offset::Offset(c) if c >= 0 => c as u64,
            _ => return 0,
        };
        match &self.opts.commands_topic_id {
            Some(id) if !metadata.is_empty() && metadata != id.as_str() => {
                tracing::warn!(
                    partition = p,
                    committed = c,
                    committed_for = metadata,
                    serving = %id,
                    "ignoring a committed offset of another log (committed against topic id {metadata}, a deleted topic of the same name): applying this log from its start"
                );
                0
            }
            _ => c,
        }
    }

    /// The newest snapshot of `p` at or below `c` and above `above` that decodes and
    /// passes the checks. The store is read for [`STORE_READ_WAIT`] at most when the
    /// partition can do without it (its whole log is there, or a standby copy is kept);
    /// else for [`STORE_RETRY_FOR`] (then the core fails the partition).
    pub(super) fn load_snapshot(&mut self, p: u32, c: u64, above: u64, low: u64) -> Option<State> {
        let can_do_without = low == 0 || above > 0;
        let deadline = Instant::now()
            + if can_do_without {
                STORE_READ_WAIT
            } else {
                STORE_RETRY_FOR
            };
        let list = loop {
            match self.read_store(p, None) {
                Ok(StoreRead::List(l)) => break l,
                Ok(StoreRead::State(_)) => unreachable!("a list was asked"),
                Err(e) if Instant::now() < deadline && !self.stop.load(Ordering::Acquire) => {
                    self.warn_repeated(
                        "snapshot store unavailable; retrying",
                        &format!("partition {p}: {e}"),
                    );
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, from = if above > 0 { "the standby copy" } else { "the log" }, "snapshot store unavailable; recovering without it");
                    return None;
                }
            }
        };
        for info in list {
            if info.offset > c {
                continue; // its outputs may not all be acknowledged: replay them instead
            }
            if info.offset <= above {
                break;
            }
            let loaded = match self.read_store(p, Some(info.clone())) {
                Ok(StoreRead::State(s)) => *s,
                Ok(StoreRead::List(_)) => unreachable!("a state was asked"),
                Err(e) => Err(e),
            };
            match loaded.and_then(|s| {
                if u32::from(s.partition()) == p && s.next_offset() == info.offset {
                    Ok(s)
                } else {
                    Err(format!(
                        "holds partition {} at offset {}",
                        s.partition(),
                        s.next_offset()
                    ))
                }
            }) {
                Ok(s) => {
                    self.metrics.snapshot_at(p, info.taken_at);
                    return Some(s);
                }
                Err(error) => {
                    self.metrics.snapshot_rejected();
                    tracing::warn!(partition = p, snapshot = %info.id, %error, "snapshot refused; falling back to an older one");
                }
            }
        }
        None
    }

    /// One read of the store on a thread of its own, given up after
    /// [`STORE_READ_WAIT`] (a store that hangs, e.g. Postgres away, must not hold the
    /// assignment).
    pub(super) fn read_store(
        &self,
        p: u32,
        load: Option<crate::store::SnapshotInfo>,
    ) -> Result<StoreRead, String> {
        let store = self.store.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("snapshot-read".into())
            .spawn(move || {
                let r = match load {
                    None => store
                        .list(p)
                        .map(StoreRead::List)
                        .map_err(|e| e.to_string()),
                    Some(info) => Ok(StoreRead::State(Box::new(
                        store
                            .load(&info)
                            .map_err(|e| e.to_string())
                            .and_then(|b| snapshot::decode(&b).map_err(|e| e.to_string())),
                    ))),
                };
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start a thread: {e}"));
        }
        rx.recv_timeout(STORE_READ_WAIT)
            .map_err(|_| format!("no answer within {} s", STORE_READ_WAIT.as_secs()))?
    }

    /// Appends a claim record to each partition of `parts` and waits for the broker to
    /// take them: each one's offset is this engine's owner epoch of the partition.
    pub(super) fn claim(&mut self, parts: &[u32]) -> BTreeMap<u32, u64> {
        let topic = self.opts.topics.commands.clone();
        let payload = encode(&CommandRecord::tick());
        let mut acks = Vec::new();
        for &p in parts {
            let ack = Arc::new(BatchAck::default());
            ack.remaining.fetch_add(1, Ordering::AcqRel);
            let mut rec: BaseRecord<'_, str, [u8], Arc<BatchAck>> =
                BaseRecord::with_opaque_to(&topic, ack.clone())
                    .partition(p as i32)
                    .payload(&payload[..])
                    .headers(OwnedHeaders::new().insert(Header {
                        key: CLAIM_HEADER,
                        value: Some(self.name.as_bytes()),
                    }));
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((e, _)) => {
                        self.fail(format!("cannot claim partition {p}: {e}"));
                        return BTreeMap::new();
                    }
                }
            }
            acks.push((p, ack));
        }
        let since = Instant::now();
        let mut warned = false;
        while acks
            .iter()
            .any(|(_, a)| a.remaining.load(Ordering::Acquire) > 0)
        {
            if self.stop.load(Ordering::Acquire) {
                return BTreeMap::new();
            }
            if !warned && since.elapsed() >= Duration::from_secs(5) {
                warned = true;
                tracing::warn!("the broker has not taken the claim records yet (unreachable?); the partitions taken over wait");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut epochs = BTreeMap::new();
        for (p, ack) in acks {
            if let Some(e) = ack.refused.lock().unwrap_or_else(|p| p.into_inner()).take() {
                self.fail(format!(
                    "the broker refused the claim of partition {p}: {e}"
                ));
                return epochs;
            }
            let epoch = ack.offset.load(Ordering::Acquire).max(0) as u64;
            epochs.insert(p, epoch);
            self.handle(Event::Claimed {
                partition: p,
                epoch,
            });
        }
        epochs
    }

    pub(super) fn follow(&mut self, p: u32, from: u64) {
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        if let Some(c) = &self.standby_consumer {
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition_offset(
                &self.opts.topics.commands,
                p as i32,
                Offset::Offset(from as i64),
            );
            if let Err(e) = c.incremental_assign(&tpl) {
                tracing::warn!(partition = p, error = %e, "cannot follow the partition as a standby copy");
            }
        }
    }

    pub(super) fn unfollow(&mut self, p: u32) {
        if let Some(c) = &self.standby_consumer {
            let Ok(assigned) = c.assignment() else { return };
            if assigned
                .find_partition(&self.opts.topics.commands, p as i32)
                .is_none()
            {
                return;
            }
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition(&self.opts.topics.commands, p as i32);
            if let Err(e) = c.incremental_unassign(&tpl) {
                tracing::warn!(error = %e, "cannot stop following the partition taken over");
            }
        }
    }

    /// Builds the standby copies of every partition (newest snapshot, then the log)
    /// before the engine joins the group's work; without the snapshot store (down), from
    /// the log's start where the log still holds every record.
    pub(super) fn init_standby(&mut self, consumer: &BaseConsumer<EngineContext>) {
        if self.standby_consumer.is_none() {
            return;
        }
        let t = Instant::now();
        let topic = self.opts.topics.commands.clone();
        let mut started = 0;
        for p in 0..self.status.partitions {
            let low = match flashsale_runtime::kafka::watermarks(consumer, &topic, p as i32) {
                Ok((l, _)) => l.max(0) as u64,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "no standby copy (cannot read the partition's offsets)");
                    continue;
                }
            };
            let state = match self.newest_snapshot(p) {
                Ok(s) => s.unwrap_or_else(|| State::new(p as u16)),
                Err(e) if low == 0 => {
                    tracing::warn!(partition = p, error = %e, "snapshot store unavailable; the standby copy starts from the log's start");
                    State::new(p as u16)
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "no standby copy (snapshot store unavailable)");
                    continue;
                }
            };
            if state.next_offset() < low {
                tracing::warn!(
                    partition = p,
                    log_start = low,
                    snapshot = state.next_offset(),
                    "no standby copy (the log behind the newest snapshot is deleted)"
                );
                continue;
            }
            started += 1;
            self.handle(Event::StandbyStarted {
                partition: p,
                state,
            });
        }
        tracing::info!(
            partitions = started,
            elapsed_ms = t.elapsed().as_millis() as u64,
            window = self.opts.standby_window,
            "standby copies started (following the partitions not owned)"
        );
    }

    /// The newest snapshot of `p` that decodes and passes the checks.
    pub(super) fn newest_snapshot(&self, p: u32) -> Result<Option<State>, String> {
        let StoreRead::List(list) = self.read_store(p, None)? else {
            unreachable!("a list was asked")
        };
        for info in list {
            let read = match self.read_store(p, Some(info.clone()))? {
                StoreRead::State(s) => *s,
                StoreRead::List(_) => unreachable!("a state was asked"),
            };
            match read {
                Ok(s) if u32::from(s.partition()) == p && s.next_offset() == info.offset => {
                    return Ok(Some(s))
                }
                _ => {
                    tracing::warn!(partition = p, snapshot = %info.id, "snapshot refused for the standby copy; trying an older one");
                }
            }
        }
        Ok(None)
    }

    /// Applies what the standby consumer has fetched (at most `max` records) to the
    /// standby copies; returns how many records it fetched.
    pub(super) fn follow_standby(&mut self, max: usize) -> usize {
        let Some(c) = &self.standby_consumer else {
            return 0;
        };
        let mut by_partition: BTreeMap<u32, Vec<LogRecord>> = BTreeMap::new();
        let mut n = 0;
        let mut error = None;
        while n < max {
            match c.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    if !flashsale_runtime::kafka::is_connection_error(&e) {
                        error = Some(e);
                    }
                    break;
                }
                Some(Ok(m)) => {
                    n += 1;
                    by_partition
                        .entry(m.partition() as u32)
                        .or_default()
                        .push(LogRecord {
                            offset: m.offset() as u64,
                            log_time: record_time_ms(m.timestamp()).unwrap_or(0),
                            payload: m.payload().unwrap_or(&[]).to_vec(),
                        });
                }
            }
        }
        if let Some(e) = error {
            self.warn_repeated("engine: standby consume error", &e);
        }
        for (partition, records) in by_partition {
            self.handle(Event::StandbyRecords { partition, records });
        }
        n
    }
}

pub(super) enum StoreRead {
    List(Vec<crate::store::SnapshotInfo>),
    State(Box<Result<State, String>>),
}
