-- Orders of user $1 in deployment $3, newest first, ties broken as the embedded read
-- model does; index orders_by_user_newest.
SELECT order_id, reservation_id, user_id, sku, quantity, total_price_cents,
       payment_transaction_id, payment_method, shipping_address, created_at
FROM orders
WHERE deployment = $3 AND user_id = $1
ORDER BY created_at DESC, partition DESC, order_id DESC
LIMIT $2
