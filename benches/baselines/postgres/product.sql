SELECT sku, sale_id, name, description, category, base_price_cents, flash_price_cents,
       total, available, sold, per_user_limit, image_url, starts_at, ends_at
FROM bench_baseline.products
WHERE sku = $1
