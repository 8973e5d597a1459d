-- Many reservations of log $10 at once; one row per id (the batch keeps the latest
-- state), and an older state never overwrites a newer one.
INSERT INTO reservations (reservation_id, partition, user_id, sku, quantity, status, created_at, expires_at, log_offset, log_id)
SELECT *, $10::text FROM UNNEST($1::text[], $2::integer[], $3::text[], $4::text[], $5::integer[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::bigint[])
ON CONFLICT (log_id, reservation_id) DO UPDATE
SET status = EXCLUDED.status,
    expires_at = EXCLUDED.expires_at,
    log_offset = EXCLUDED.log_offset,
    updated_at = now()
WHERE reservations.log_offset < EXCLUDED.log_offset
