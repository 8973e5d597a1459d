-- The conditional decrement: $1 sku, $2 quantity. No row back = out of stock.
-- Taken last in the transaction so the hot row's lock is held for one round trip.
UPDATE bench_baseline.products
SET available = available - $2
WHERE sku = $1 AND available >= $2
RETURNING available
