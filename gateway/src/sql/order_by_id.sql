SELECT order_id, reservation_id, user_id, sku, quantity, total_price_cents,
       payment_transaction_id, payment_method, shipping_address, created_at
FROM orders
WHERE order_id = $1
