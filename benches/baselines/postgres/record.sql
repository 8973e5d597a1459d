-- $1 reservation id, $2 user, $3 sku, $4 quantity, $5 created, $6 expires.
INSERT INTO bench_baseline.reservations
    (reservation_id, user_id, sku, quantity, status, created_at, expires_at)
VALUES ($1, $2, $3, $4, 'RESERVED', $5, $6)
