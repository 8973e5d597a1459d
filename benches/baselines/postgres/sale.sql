SELECT sale_id, name, starts_at, ends_at, ttl_seconds FROM bench_baseline.sales WHERE sale_id = $1
