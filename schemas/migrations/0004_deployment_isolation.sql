-- 0004_deployment_isolation: every projected row belongs to one log, and reads ask for
-- their deployment's rows only.
--
-- Before this, `sales`, `products` and `reservations` were keyed by their own ids only
-- and `orders` by order id: two deployments (topic prefixes) on one database wrote
-- over each other's products (a SKU both sell kept one row), and the gateway's order
-- reads, filtering by user or order id alone, answered one deployment's orders on the
-- other's gateway.
--
-- Now every such row carries `log_id` (`events-topic-name/topic-id`, as in
-- 0002_log_identity) in its key, and `deployment` (the events topic's name, derived
-- from log_id) is what the gateway's reads filter by: a deployment is its topic names,
-- so its order history stays readable after its topics are recreated (a new log of the
-- same deployment) while another prefix's rows never are.
--
-- Old rows: sales, products and reservations rows written before this migration get
-- log_id '' (log unknown), and every projector's progress is reset so that each log is
-- projected again from its start, idempotently, into rows of its own (orders already
-- carry their log since 0002; a copy under the same log is dropped). Rows of log ''
-- belong to no deployment: no read returns them; `flashsale audit` counts them.

ALTER TABLE sales ADD COLUMN log_id text NOT NULL DEFAULT '';
ALTER TABLE products ADD COLUMN log_id text NOT NULL DEFAULT '';
ALTER TABLE reservations ADD COLUMN log_id text NOT NULL DEFAULT '';

ALTER TABLE products DROP CONSTRAINT products_sale_id_fkey;
ALTER TABLE sales DROP CONSTRAINT sales_pkey;
ALTER TABLE sales ADD PRIMARY KEY (log_id, sale_id);
ALTER TABLE products DROP CONSTRAINT products_pkey;
ALTER TABLE products ADD PRIMARY KEY (log_id, sku);
ALTER TABLE products
    ADD CONSTRAINT products_sale_fkey FOREIGN KEY (log_id, sale_id) REFERENCES sales (log_id, sale_id);
DROP INDEX products_by_sale;
CREATE INDEX products_by_sale ON products (log_id, sale_id);

ALTER TABLE reservations DROP CONSTRAINT reservations_pkey;
ALTER TABLE reservations ADD PRIMARY KEY (log_id, reservation_id);
ALTER TABLE reservations
    ADD COLUMN deployment text GENERATED ALWAYS AS (split_part(log_id, '/', 1)) STORED;
DROP INDEX reservations_by_user;
CREATE INDEX reservations_by_user ON reservations (deployment, user_id, created_at DESC);
DROP INDEX reservations_by_sku_status;
CREATE INDEX reservations_by_sku_status ON reservations (log_id, sku, status);

ALTER TABLE orders DROP CONSTRAINT orders_pkey;
ALTER TABLE orders ADD PRIMARY KEY (log_id, order_id);
ALTER TABLE orders DROP CONSTRAINT orders_reservation_id_key;
ALTER TABLE orders ADD CONSTRAINT orders_reservation_once UNIQUE (log_id, reservation_id);
ALTER TABLE orders
    ADD COLUMN deployment text GENERATED ALWAYS AS (split_part(log_id, '/', 1)) STORED;
-- GET /api/v1/orders/{orderId} and /orders/user/{userId} of one deployment.
CREATE INDEX orders_by_deployment_id ON orders (deployment, order_id);
DROP INDEX orders_by_user_newest;
CREATE INDEX orders_by_user_newest
    ON orders (deployment, user_id, created_at DESC, partition DESC, order_id DESC);

-- Project every log again into rows of its own (see above).
DELETE FROM projector_offsets;
DELETE FROM projector_positions;
