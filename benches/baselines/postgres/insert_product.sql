INSERT INTO bench_baseline.products
    (sku, sale_id, position, name, description, category, base_price_cents,
     flash_price_cents, total, available, sold, per_user_limit, image_url, starts_at, ends_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, 0, $10, $11, $12, $13)
ON CONFLICT (sku) DO NOTHING
