-- (PostgreSQL: the same as migrations/sqlite/0008_reading_error.sql, with its types.)
-- Fig. 6's rates are read by eye from the published figure (migration 0005), each to within
-- 0.05. A report takes a result to agree with such a number when the number, give or take
-- that error, meets the result's 95% interval: 98 of 100 beside a reading of 1.00 agrees.
-- NULL where the source prints the number.
ALTER TABLE baselines ADD COLUMN reading_error DOUBLE PRECISION;

UPDATE baselines SET reading_error = 0.05
WHERE source = 'IBC paper, Fig. 6 (read from the plot)';
