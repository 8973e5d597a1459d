-- Many orders at once. An order is never changed: a second copy (same order or same
-- reservation, of the same log) is dropped. $13: the log they were projected from.
INSERT INTO orders (order_id, reservation_id, partition, log_offset, user_id, sku, quantity, total_price_cents,
                    payment_transaction_id, payment_method, shipping_address, created_at, log_id)
SELECT *, $13::text FROM UNNEST($1::text[], $2::text[], $3::integer[], $4::bigint[], $5::text[], $6::text[], $7::integer[],
                     $8::bigint[], $9::text[], $10::text[], $11::text[], $12::timestamptz[])
ON CONFLICT DO NOTHING
