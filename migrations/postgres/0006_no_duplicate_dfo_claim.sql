-- Migration 0005 repeated, at N = 8, 16 and 32, migration 0002's claim that plain DFO fails
-- past N = 5: one claim, one row (0002's at N = 5).
DELETE FROM baselines
WHERE source = 'IBC paper, App. B.4 / Fig. 11'
  AND task = 'particle'
  AND method = 'ebm'
  AND variant = 'dfo'
  AND n_dim IN (8, 16, 32);
