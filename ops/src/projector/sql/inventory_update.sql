-- Counters of many products at once (of log $6); one row per SKU (the batch keeps the
-- latest), and an older change never overwrites a newer one.
UPDATE products p
SET total_inventory = u.total, held = u.held, sold = u.sold, log_offset = u.log_offset, updated_at = now()
FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u (sku, total, held, sold, log_offset)
WHERE p.log_id = $6 AND p.sku = u.sku AND p.log_offset <= u.log_offset
