//! Producing outputs and tracking their acks: the part of the shell that talks to the
//! producer.

use super::*;

impl Shell {
    /// Produces one batch's events and replies (with the owner epoch) and tracks their
    /// acks. One record per partition and applied batch on `events`, one per gateway on
    /// `replies` (cut at MAX_OUTPUT_RECORD_BYTES).
    pub(super) fn emit(&mut self, batch_id: BatchId, p: u32, applied: &Applied, epoch: u64) {
        let ack = Arc::new(BatchAck::default());
        let events_topic = self.opts.topics.events.clone();
        let replies_topic = self.opts.topics.replies.clone();
        let mut batch = BatchEncoder::new();
        let mut key: Option<String> = None;
        let mut last_time = 0;
        for ev in &applied.events {
            if key.is_none() {
                key = event_key(ev).map(str::to_owned);
            }
            batch.push(ev);
            last_time = ev.log_time;
            if batch.body_len() >= MAX_OUTPUT_RECORD_BYTES {
                let payload = batch.take();
                let k = key.take();
                self.produce(
                    &events_topic,
                    p,
                    k.as_deref(),
                    Some(last_time),
                    &payload,
                    &ack,
                    Some(epoch),
                );
            }
        }
        if batch.count() > 0 {
            let payload = batch.take();
            self.produce(
                &events_topic,
                p,
                key.as_deref(),
                Some(last_time),
                &payload,
                &ack,
                Some(epoch),
            );
        }
        let mut by_gateway: BTreeMap<u32, BatchEncoder> = BTreeMap::new();
        for (to, reply) in &applied.replies {
            if *to >= self.replies_partitions {
                self.refresh_replies_partitions();
            }
            if *to >= self.replies_partitions {
                if !self.warned_reply_to {
                    self.warned_reply_to = true;
                    tracing::warn!(
                        reply_to = to,
                        replies_partitions = self.replies_partitions,
                        "reply for a gateway id with no replies partition dropped"
                    );
                }
                continue;
            }
            let replies = by_gateway.entry(*to).or_default();
            replies.push(reply);
            if replies.body_len() >= MAX_OUTPUT_RECORD_BYTES {
                let payload = replies.take();
                self.produce(&replies_topic, *to, None, None, &payload, &ack, Some(epoch));
            }
        }
        for (to, mut replies) in by_gateway {
            if replies.count() > 0 {
                let payload = replies.take();
                self.produce(&replies_topic, to, None, None, &payload, &ack, Some(epoch));
            }
        }
        self.acks.push((batch_id, ack));
    }

    /// A reply for a gateway id past the replies partitions this engine knows: the
    /// topic may have grown since it started (`flashsale topics grow`). Reads the count
    /// again, at most once a second, through the producer's own client, so the
    /// producer's metadata knows the new partitions before anything is produced to
    /// them (producing to a partition it does not know fails).
    fn refresh_replies_partitions(&mut self) {
        if self
            .replies_checked_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.replies_checked_at = Some(Instant::now());
        let topic = self.opts.topics.replies.clone();
        match self
            .producer
            .client()
            .fetch_metadata(Some(topic.as_str()), Duration::from_secs(5))
        {
            Ok(md) => {
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map_or(0, |t| t.partitions().len() as u32);
                if n > self.replies_partitions {
                    tracing::info!(
                        topic = %topic,
                        before = self.replies_partitions,
                        partitions = n,
                        "the replies topic has more partitions now (topics grow)"
                    );
                    self.replies_partitions = n;
                    self.warned_reply_to = false;
                }
            }
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "cannot read the replies topic's partition count")
            }
        }
    }

    /// Enqueues one record in the producer, waiting while its queue is full; false
    /// (and the engine failing) if it cannot: once the broker refused an output for
    /// good, nothing more is enqueued. `epoch`: the `EPOCH_HEADER` of an output.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn produce(
        &mut self,
        topic: &str,
        partition: u32,
        key: Option<&str>,
        time_ms: Option<u64>,
        payload: &[u8],
        ack: &Arc<BatchAck>,
        epoch: Option<u64>,
    ) -> bool {
        if self.refused.load(Ordering::Acquire) || self.failure.is_some() {
            return false;
        }
        ack.remaining.fetch_add(1, Ordering::AcqRel);
        let mut rec: BaseRecord<'_, str, [u8], Arc<BatchAck>> =
            BaseRecord::with_opaque_to(topic, ack.clone())
                .partition(partition as i32)
                .payload(payload);
        if let Some(e) = epoch {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: EPOCH_HEADER,
                value: Some(epoch_header_value(e).as_bytes()),
            }));
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(t) = time_ms {
            rec = rec.timestamp(t as i64);
        }
        let mut full_since: Option<Instant> = None;
        loop {
            match self.producer.send(rec) {
                Ok(()) => {
                    if let Some(t) = full_since {
                        tracing::info!(
                            waited_ms = t.elapsed().as_millis() as u64,
                            "the producer's queue has room again"
                        );
                    }
                    return true;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    if self.stop.load(Ordering::Acquire) && self.refused.load(Ordering::Acquire) {
                        ack.remaining.fetch_sub(1, Ordering::AcqRel);
                        return false;
                    }
                    let since = *full_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(5) {
                        self.warn_repeated(
                            "the producer's queue is full (the broker takes nothing); waiting",
                            &format!("{topic} partition {partition}"),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => {
                    ack.remaining.fetch_sub(1, Ordering::AcqRel);
                    self.fail(format!(
                        "cannot produce to {topic} partition {partition}: {e}"
                    ));
                    return false;
                }
            }
        }
    }

    /// Hands acknowledged (or refused) batches and ticks to the core.
    pub(super) fn reap_acks(&mut self) {
        let mut i = 0;
        while i < self.acks.len() {
            let (id, ack) = &self.acks[i];
            if ack.remaining.load(Ordering::Acquire) > 0 {
                i += 1;
                continue;
            }
            let (id, refused) = (
                *id,
                ack.refused.lock().unwrap_or_else(|p| p.into_inner()).take(),
            );
            self.acks.remove(i);
            let event = match refused {
                Some(error) => Event::ProduceFailed { batch: id, error },
                None => Event::Acked { batch: id },
            };
            self.handle(event);
        }
        let done: Vec<u32> = self
            .ticks
            .iter()
            .filter(|(_, a)| a.remaining.load(Ordering::Acquire) == 0)
            .map(|(p, _)| *p)
            .collect();
        for partition in done {
            self.ticks.remove(&partition);
            self.handle(Event::TickDone { partition });
        }
    }

    pub(super) fn commit(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        offsets: &[(u32, u64)],
        sync: bool,
    ) {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in offsets {
            let mut e = tpl.add_partition(&self.opts.topics.commands, *p as i32);
            let _ = e.set_offset(Offset::Offset(*next as i64));
            // Which log the offset is of: a recreated topic's new log ignores it.
            if let Some(id) = &self.opts.commands_topic_id {
                e.set_metadata(id.as_str());
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if sync && (!self.health.is_reachable() || consumer.assignment_lost()) {
            tracing::warn!("offsets not committed now (broker unreachable); the next owner replays from the last commit");
            return;
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = consumer.commit(&tpl, mode) {
            // Not fatal: a later commit covers it; a takeover re-produces a little more.
            self.warn_repeated("offset commit failed", &e);
        }
    }

    /// Waits (at most [`REVOKE_ACK_WAIT`]) for the produced outputs to be
    /// acknowledged; true if all were. Those that were not stay queued in the producer
    /// and uncommitted (the next owner produces them again; readers drop repeats).
    pub(super) fn drain_acks(&mut self) -> bool {
        let wait = if self.health.is_reachable() {
            REVOKE_ACK_WAIT
        } else {
            Duration::from_millis(200)
        };
        let _ = self.producer.flush(wait);
        self.reap_acks();
        if self.host.in_flight() == 0 {
            return true;
        }
        tracing::warn!(
            batches = self.host.in_flight(),
            waited_ms = wait.as_millis() as u64,
            "outputs not acknowledged yet (broker unreachable?): left uncommitted, still queued; the next owner of the partition produces them again"
        );
        false
    }
}
