-- IBC's explicit (MSE) numbers come from two networks, and they differ as 5% and 100% do at
-- 2-D: the README's 5% from `mlp_mse.gin` (width 256, depth 2; `run_mlp_mse.sh 2`), the
-- paper's N-D points (Fig. 6) from `mlp_mse_best.gin` (width 128, depth 16, dropout 0.1,
-- 50k steps) as far as the released code tells: IBC's README gives it, with
-- `run_mlp_mse_best.sh N`, as the best MSE config for the N-D environment. A report puts an
-- MSE trial beside the number of its own network only, as it puts an energy-based trial
-- beside the number of its own training and inference: `variant` names the network.
UPDATE baselines SET variant = 'width 256, depth 2'
WHERE source = 'IBC README' AND task = 'particle' AND method = 'mse';

UPDATE baselines SET variant = 'width 128, depth 16',
    note = note || '; network: width 128, depth 16 (mlp_mse_best.gin, the README''s N-D config)'
WHERE source LIKE 'IBC paper, Fig. 6%' AND task = 'particle' AND method = 'mse';
