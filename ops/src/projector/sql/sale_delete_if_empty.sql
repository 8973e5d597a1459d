-- Sale $1 of log $2 leaves once none of its products is left.
DELETE FROM sales s
WHERE s.log_id = $2 AND s.sale_id = $1
  AND NOT EXISTS (SELECT 1 FROM products p WHERE p.log_id = s.log_id AND p.sale_id = s.sale_id)
