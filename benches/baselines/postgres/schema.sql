-- baseline-postgres: the seed's design, one database, row-level decisions.
-- A throwaway schema of its own; the server drops and recreates it at start unless
-- started with --keep-data.
CREATE SCHEMA IF NOT EXISTS bench_baseline;

CREATE TABLE IF NOT EXISTS bench_baseline.sales (
    sale_id      text PRIMARY KEY,
    name         text NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    ttl_seconds  integer NOT NULL
);

-- One row per SKU: the hot row every reservation of a hot SKU updates.
CREATE TABLE IF NOT EXISTS bench_baseline.products (
    sku               text PRIMARY KEY,
    sale_id           text NOT NULL REFERENCES bench_baseline.sales (sale_id),
    position          integer NOT NULL,
    name              text NOT NULL,
    description       text NOT NULL,
    category          text NOT NULL,
    base_price_cents  bigint NOT NULL,
    flash_price_cents bigint NOT NULL,
    total             bigint NOT NULL CHECK (total >= 0),
    available         bigint NOT NULL CHECK (available >= 0),
    sold              bigint NOT NULL DEFAULT 0,
    per_user_limit    integer NOT NULL CHECK (per_user_limit >= 1),
    image_url         text NOT NULL,
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS products_by_sale ON bench_baseline.products (sale_id, position);

-- The per-user limit: the unique key allows one row per (user, SKU), so concurrent
-- reservations of one user serialize on it, and the row's count can only grow within
-- the limit (see hold.sql).
CREATE TABLE IF NOT EXISTS bench_baseline.user_holdings (
    user_id  text NOT NULL,
    sku      text NOT NULL,
    held     bigint NOT NULL,
    CONSTRAINT user_holdings_one_row_per_user_and_sku UNIQUE (user_id, sku)
);

-- No foreign key to products on purpose: its check would lock the hot product row
-- (FOR KEY SHARE) in every reservation transaction.
CREATE TABLE IF NOT EXISTS bench_baseline.reservations (
    reservation_id  text PRIMARY KEY,
    user_id         text NOT NULL,
    sku             text NOT NULL,
    quantity        integer NOT NULL,
    status          text NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL
);
