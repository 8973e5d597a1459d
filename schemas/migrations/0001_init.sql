-- 0001_init: the Postgres side of Kafka mode.
--
-- Applied by `flashsale migrate --postgres URL` (and at start of the engine, gateway,
-- projector and `serve --kafka`), in one transaction with the other pending migrations,
-- and recorded in schema_migrations. Never edit a migration that has shipped: add the
-- next NNNN_name.sql instead (the recorded md5 catches edits).
--
-- Who writes what:
--   engine_snapshots                 the engine's background snapshot writer
--   sales, products, reservations,
--   orders, projector_offsets,
--   projector_positions              the projector, one transaction per batch of events
-- Times are timestamptz (log time of the engine, UTC); money is integer cents.

-- Snapshots of one partition's engine state (engine/src/snapshot.rs layout: magic,
-- format version, CRC-32 of the body, body). Kept: the newest K per partition.
CREATE TABLE engine_snapshots (
    partition       integer     NOT NULL CHECK (partition >= 0),
    -- The first command-log offset NOT covered: replay starts here.
    log_offset      bigint      NOT NULL CHECK (log_offset >= 0),
    -- Log time of the last applied record.
    taken_at        timestamptz NOT NULL,
    format_version  smallint    NOT NULL,
    -- CRC-32 (IEEE) of the body, as in the snapshot's header; checked on load.
    checksum        bigint      NOT NULL CHECK (checksum BETWEEN 0 AND 4294967295),
    size_bytes      bigint      NOT NULL,
    state           bytea       NOT NULL,
    written_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, log_offset)
);
-- Snapshots are large and written often; pglz over tens of MB costs more than the disk
-- it saves, so store the bytes out of line, uncompressed.
ALTER TABLE engine_snapshots ALTER COLUMN state SET STORAGE EXTERNAL;

CREATE TABLE sales (
    sale_id            text        PRIMARY KEY,
    name               text        NOT NULL,
    starts_at          timestamptz NOT NULL,
    ends_at            timestamptz NOT NULL,
    reservation_ttl_s  integer     NOT NULL,
    -- Every SKU of the sale, on every partition.
    all_skus           text[]      NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- One row per configured product, with its counters as of `log_offset` (the command
-- offset of the last change applied; older changes never overwrite newer ones).
CREATE TABLE products (
    sku                     text        PRIMARY KEY,
    sale_id                 text        NOT NULL REFERENCES sales (sale_id),
    partition               integer     NOT NULL,
    name                    text        NOT NULL,
    description             text        NOT NULL,
    category                text        NOT NULL,
    base_price_cents        bigint      NOT NULL CHECK (base_price_cents >= 0),
    flash_sale_price_cents  bigint      NOT NULL CHECK (flash_sale_price_cents >= 0),
    total_inventory         bigint      NOT NULL CHECK (total_inventory >= 0),
    per_user_limit          integer     NOT NULL,
    image_url               text        NOT NULL,
    held                    bigint      NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold                    bigint      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    log_offset              bigint      NOT NULL,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_by_sale ON products (sale_id);

-- Every reservation's latest state (as of `log_offset`).
CREATE TABLE reservations (
    reservation_id  text        PRIMARY KEY,
    partition       integer     NOT NULL,
    user_id         text        NOT NULL,
    sku             text        NOT NULL,
    quantity        integer     NOT NULL CHECK (quantity > 0),
    status          text        NOT NULL CHECK (status IN ('RESERVED', 'CONFIRMED', 'EXPIRED', 'CANCELLED')),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    log_offset      bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_by_user ON reservations (user_id, created_at DESC);
CREATE INDEX reservations_by_sku_status ON reservations (sku, status);

-- Orders: written once, never changed. At most one per reservation.
CREATE TABLE orders (
    order_id                text        PRIMARY KEY,
    reservation_id          text        NOT NULL UNIQUE,
    partition               integer     NOT NULL,
    -- Command offset of the checkout that created it.
    log_offset              bigint      NOT NULL,
    user_id                 text        NOT NULL,
    sku                     text        NOT NULL,
    quantity                integer     NOT NULL CHECK (quantity > 0),
    total_price_cents       bigint      NOT NULL CHECK (total_price_cents >= 0),
    payment_transaction_id  text        NOT NULL,
    payment_method          text        NOT NULL CHECK (payment_method IN ('CREDIT_CARD', 'DEBIT_CARD', 'UPI', 'WALLET', 'NET_BANKING')),
    shipping_address        text        NOT NULL,
    status                  text        NOT NULL DEFAULT 'PAID',
    created_at              timestamptz NOT NULL,
    projected_at            timestamptz NOT NULL DEFAULT now()
);
-- GET /api/v1/orders/user/{userId}: newest first, ties as the embedded read model
-- breaks them (partition, then the id's ULID).
CREATE INDEX orders_by_user_newest ON orders (user_id, created_at DESC, partition DESC, order_id DESC);

-- Exactly-once projection: per command-log partition, the next command offset whose
-- events are not yet in the tables above. Updated in the same transaction as the rows,
-- so a batch is either wholly applied and recorded, or not at all; records at lower
-- offsets (re-deliveries, a second engine during a rebalance) are skipped.
CREATE TABLE projector_offsets (
    partition    integer     PRIMARY KEY,
    next_offset  bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Where the projector resumes reading the events topic (the Kafka offset after the last
-- message it applied), per topic partition; same transaction as above.
CREATE TABLE projector_positions (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
