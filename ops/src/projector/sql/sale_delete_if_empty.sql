DELETE FROM sales s
WHERE s.sale_id = $1 AND NOT EXISTS (SELECT 1 FROM products p WHERE p.sale_id = s.sale_id)
