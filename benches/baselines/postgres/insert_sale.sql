INSERT INTO bench_baseline.sales (sale_id, name, starts_at, ends_at, ttl_seconds)
VALUES ($1, $2, $3, $4, $5)
