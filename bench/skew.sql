-- Benchmark dataset variant "skew": one table holds more than 90% of the
-- database, the case where a tool that parallelises per table runs on one
-- core. It is realistic.sql at 0.4 of the scale, then twice as many events
-- rows again (same generator, same seed, so deterministic), which keeps the
-- total near realistic.sql's at the same scale:
--
--   createdb skew && psql -v scale=1 -d skew -f skew.sql
--
-- scale=1 is about 1.1 GB (pg_database_size), events (with its indexes)
-- about 94% of it; at small scales the fixed catalog weighs more.
\set ON_ERROR_STOP on
SELECT :scale * 0.4 AS scale \gset
\ir realistic.sql

-- Rebuilding the two secondary indexes afterwards is faster than
-- maintaining them row by row; the result is the same schema.
DROP INDEX events_customer_id_idx, events_happened_at_idx;
INSERT INTO events (customer_id, kind, payload, amount, happened_at)
SELECT 1 + (random() * (1000000 * :scale - 1))::bigint,
       (ARRAY['view','click','purchase','refund','signup'])[1 + (random() * 4)::int],
       jsonb_build_object('session', md5(random()::text),
                          'ua', 'Mozilla/5.0 ' || (random() * 100)::int,
                          'ref', substr(md5(random()::text), 1, (random() * 20)::int)),
       round((random() * 500)::numeric, 2),
       now() - random() * interval '365 days'
FROM generate_series(1, (8000000 * :scale)::bigint);
CREATE INDEX ON events (customer_id);
CREATE INDEX ON events (happened_at);

ANALYZE;
SELECT pg_size_pretty(pg_database_size(current_database())) AS database_size,
       round(100.0 * pg_total_relation_size('events') / pg_database_size(current_database()), 1)
           AS events_percent;
