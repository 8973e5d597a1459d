SELECT held FROM bench_baseline.user_holdings WHERE user_id = $1 AND sku = $2
