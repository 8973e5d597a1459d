-- Count the units against the user's limit: $1 user, $2 sku, $3 quantity, $4 limit.
-- No row back = the limit would be exceeded.
INSERT INTO bench_baseline.user_holdings AS h (user_id, sku, held)
SELECT $1, $2, $3::bigint
WHERE $3::bigint <= $4::bigint
ON CONFLICT (user_id, sku)
DO UPDATE SET held = h.held + EXCLUDED.held
WHERE h.held + EXCLUDED.held <= $4::bigint
RETURNING h.held
