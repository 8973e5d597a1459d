-- The products of sale $1 (of log $3) among SKUs $2 leave (see sale_delete_if_empty.sql
-- for the sale).
DELETE FROM products WHERE log_id = $3 AND sale_id = $1 AND sku = ANY($2::text[])
