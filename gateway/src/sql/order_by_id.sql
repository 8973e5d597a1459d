-- Order $1 of deployment $2 (the events topic's name: every log it has had).
SELECT order_id, reservation_id, user_id, sku, quantity, total_price_cents,
       payment_transaction_id, payment_method, shipping_address, created_at
FROM orders
WHERE deployment = $2 AND order_id = $1
LIMIT 1
