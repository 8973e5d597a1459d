-- A product of log $13 as configured at command offset $12; counters start at zero.
INSERT INTO products (sku, sale_id, partition, name, description, category, base_price_cents,
                      flash_sale_price_cents, total_inventory, per_user_limit, image_url, held, sold, log_offset, log_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, $12, $13)
ON CONFLICT (log_id, sku) DO UPDATE
SET sale_id = EXCLUDED.sale_id,
    partition = EXCLUDED.partition,
    name = EXCLUDED.name,
    description = EXCLUDED.description,
    category = EXCLUDED.category,
    base_price_cents = EXCLUDED.base_price_cents,
    flash_sale_price_cents = EXCLUDED.flash_sale_price_cents,
    total_inventory = EXCLUDED.total_inventory,
    per_user_limit = EXCLUDED.per_user_limit,
    image_url = EXCLUDED.image_url,
    held = 0,
    sold = 0,
    log_offset = EXCLUDED.log_offset,
    updated_at = now()
WHERE products.log_offset < EXCLUDED.log_offset
