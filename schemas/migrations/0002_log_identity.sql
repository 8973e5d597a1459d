-- 0002_log_identity: snapshots and projector progress belong to one log.
--
-- A log is a Kafka topic as created once: `log_id` is `name/topic-id` (Kafka's UUID of
-- the topic, see flashsale_runtime::kafka_id). Two deployments (topic prefixes) on one
-- database, or topics deleted and created again over an existing database, are
-- different logs: an engine must never start from another log's snapshot, and the
-- projector must never skip records because another log got further.
--
-- Rows written before this migration get log_id '' ("log unknown"): no engine or
-- projector of a known log uses them (an engine replays from the log instead; the
-- projector projects again, idempotently). `flashsale audit` lists them.

ALTER TABLE engine_snapshots ADD COLUMN log_id text NOT NULL DEFAULT '';
ALTER TABLE engine_snapshots DROP CONSTRAINT engine_snapshots_pkey;
ALTER TABLE engine_snapshots ADD PRIMARY KEY (log_id, partition, log_offset);

-- The commands log whose offsets these are (the events topic's identity: the projector
-- reads events, whose partitions and offsets are those of the commands they answer).
ALTER TABLE projector_offsets ADD COLUMN log_id text NOT NULL DEFAULT '';
ALTER TABLE projector_offsets DROP CONSTRAINT projector_offsets_pkey;
ALTER TABLE projector_offsets ADD PRIMARY KEY (log_id, partition);

ALTER TABLE projector_positions ADD COLUMN log_id text NOT NULL DEFAULT '';
ALTER TABLE projector_positions DROP CONSTRAINT projector_positions_pkey;
ALTER TABLE projector_positions ADD PRIMARY KEY (log_id, topic, partition);

-- Which log an order was projected from, so `flashsale audit` of one deployment checks
-- its own orders (orders of another log are counted, not reported as violations).
ALTER TABLE orders ADD COLUMN log_id text NOT NULL DEFAULT '';
