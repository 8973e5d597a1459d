-- The products of sale $1 among SKUs $2 leave (see sale_delete_if_empty.sql for the sale).
DELETE FROM products WHERE sale_id = $1 AND sku = ANY($2::text[])
