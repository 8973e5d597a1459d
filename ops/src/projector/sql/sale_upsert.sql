-- Sale $1 of log $7.
INSERT INTO sales (sale_id, name, starts_at, ends_at, reservation_ttl_s, all_skus, log_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (log_id, sale_id) DO UPDATE
SET name = EXCLUDED.name,
    starts_at = EXCLUDED.starts_at,
    ends_at = EXCLUDED.ends_at,
    reservation_ttl_s = EXCLUDED.reservation_ttl_s,
    all_skus = EXCLUDED.all_skus,
    updated_at = now()
