-- The demo's sample database: a small shop.
CREATE TABLE customers (id bigserial PRIMARY KEY, email text UNIQUE NOT NULL, name text, country char(2),
                        created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO customers (email, name, country, created_at)
SELECT 'user' || g || '@example.com', initcap(md5(g::text)), (ARRAY['US','DE','FR','JP','BR','IN'])[1 + g % 6],
       timestamptz '2026-01-01' + g * interval '7 minutes'
FROM generate_series(1, 20000) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
                     placed_at timestamptz NOT NULL, items jsonb, total numeric(12,2));
INSERT INTO orders (customer_id, placed_at, items, total)
SELECT 1 + g % 20000, timestamptz '2026-01-01' + g * interval '1 minute',
       jsonb_build_object('sku', 'SKU-' || (g % 97), 'qty', g % 5 + 1), round((g % 500) * 1.37, 2)
FROM generate_series(1, 100000) g;
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE VIEW revenue_by_country AS
SELECT c.country, sum(o.total) AS revenue FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY 1;
