-- 0003_readmodel_snapshots: gateways start from a snapshot of their read model.
--
-- A gateway (Kafka mode) builds its read model (availability, reservations, orders)
-- from the events topic. Rebuilding it from offset 0 grows with the topic's history, so
-- gateways write snapshots of it here now and then (gateway/src/snapshot.rs) and a
-- starting gateway loads the newest valid one and replays only the events after it.
--
-- One snapshot covers the whole read model: per events partition, the events offset it
-- covers (inside the image). `covered` is the sum of those offsets (records covered):
-- the newest is the one with the most. A row is only inserted when it covers more than
-- every stored row of its log; the newest 2 per log are kept.
CREATE TABLE readmodel_snapshots (
    -- The events topic as created once: `name/topic-id` (see 0002_log_identity).
    log_id          text        NOT NULL,
    covered         bigint      NOT NULL CHECK (covered >= 0),
    taken_at        timestamptz NOT NULL,
    format_version  smallint    NOT NULL,
    -- CRC-32 (IEEE) of the body, as in the image's header; checked on load.
    checksum        bigint      NOT NULL CHECK (checksum BETWEEN 0 AND 4294967295),
    size_bytes      bigint      NOT NULL,
    image           bytea       NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (log_id, covered)
);
ALTER TABLE readmodel_snapshots ALTER COLUMN image SET STORAGE EXTERNAL;
