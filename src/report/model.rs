//! The numbers of a report, computed from the store's rows alone: trials grouped into
//! settings (their overrides without the seed), success pooled over the final evaluations'
//! episodes with a Wilson interval, best checkpoints, speed, and the matching IBC number.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::eval::{wilson_interval, Z95};
use crate::policy::ebm::NegativeKind;
use crate::policy::InferenceKind;
use crate::spec::{describe_settings, Spec};
use crate::store::{Baseline, CurvePoint, ReportEvaluation, ReportTrial, TrialStatus};
use crate::trial::logged_seconds;

/// Everything the store holds about one experiment, as read for a report.
#[derive(Debug, Clone)]
pub struct ExperimentRows {
    pub name: String,
    pub trials: Vec<ReportTrial>,
    pub evaluations: Vec<ReportEvaluation>,
    pub curves: Vec<CurvePoint>,
}

/// One trial, digested.
#[derive(Debug, Clone, Serialize)]
pub struct TrialDigest {
    pub id: String,
    pub status: TrialStatus,
    pub setting: String,
    /// The trial's overrides without the seed.
    pub overrides: BTreeMap<String, serde_json::Value>,
    pub seed: u64,
    pub policy: String,
    pub variant: Option<String>,
    /// The task's kind, and its action dimension (the N of IBC's N-D study).
    pub task: String,
    pub n_dim: usize,
    pub step: i64,
    pub iterations: i64,
    pub error: Option<String>,
    /// The evaluation of the last step (only once the trial completed).
    pub final_step_success: Option<(i64, i64)>,
    /// The best evaluated checkpoint: (step, success rate).
    pub best: Option<(i64, f64)>,
    pub iterations_per_second: Option<f64>,
}

/// One setting (trials that differ only in their seed).
#[derive(Debug, Clone, Serialize)]
pub struct SettingRow {
    pub experiment: String,
    pub setting: String,
    pub policy: String,
    pub variant: Option<String>,
    pub task: String,
    pub n_dim: usize,
    pub trials: usize,
    pub completed: usize,
    pub seeds: Vec<u64>,
    /// Episodes and successes of the completed trials' final evaluations, pooled.
    pub episodes: i64,
    pub successes: i64,
    pub success_rate: Option<f64>,
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
    /// Best checkpoint over the setting's trials: (trial, step, success rate).
    pub best: Option<(String, i64, f64)>,
    pub final_step: i64,
    /// The configured steps at the completed trials' mean rate; none until a trial
    /// completes (a projection would read as a measured time).
    pub train_seconds: Option<f64>,
    pub iterations_per_second: Option<f64>,
    pub ibc: Option<IbcNumber>,
    /// Percentage points from the IBC number.
    pub difference_pp: Option<f64>,
    /// Trials not completed, as `id (status)`.
    pub unfinished: Vec<String>,
}

/// The published number a setting is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct IbcNumber {
    pub source: String,
    pub success_rate: f64,
    pub variant: Option<String>,
    pub steps: Option<i64>,
    pub note: String,
    /// How far off the rate may be where it is read from a plot (`None`: printed).
    pub reading_error: Option<f64>,
}

impl IbcNumber {
    /// Whether a result with this 95% interval agrees: the published rate, give or take
    /// its reading error, meets the interval.
    pub fn agrees_with(&self, low: f64, high: f64) -> bool {
        let error = self.reading_error.unwrap_or(0.0);
        self.success_rate + error >= low && self.success_rate - error <= high
    }
}

/// The spec keys a setting is named by (the seed is what varies within a setting).
const SEED_KEY: &str = "train.seed";

pub fn digest_trials(rows: &ExperimentRows) -> Result<Vec<TrialDigest>> {
    let mut by_trial: BTreeMap<&str, Vec<&ReportEvaluation>> = BTreeMap::new();
    for e in &rows.evaluations {
        by_trial.entry(&e.trial).or_default().push(e);
    }
    // Training time: each logged window's steps at that window's rate, summed (a plain
    // mean of the rates would overweight fast windows).
    let mut rates: BTreeMap<&str, Vec<(u64, f64)>> = BTreeMap::new();
    for p in rows
        .curves
        .iter()
        .filter(|p| p.name == "iterations_per_second")
    {
        rates
            .entry(&p.trial)
            .or_default()
            .push((p.step.max(0) as u64, p.value));
    }
    rows.trials
        .iter()
        .map(|t| {
            let spec: Spec = serde_json::from_str(&t.config_json)
                .with_context(|| format!("trial {}: its recorded config", t.id))?;
            let mut overrides: BTreeMap<String, serde_json::Value> =
                serde_json::from_str(&t.overrides_json).with_context(|| {
                    format!(
                        "trial {}: its recorded overrides are not a JSON object of settings: {}",
                        t.id, t.overrides_json
                    )
                })?;
            overrides.remove(SEED_KEY);
            let setting = describe_settings(&serde_json::to_value(&overrides)?);
            let evaluations = by_trial.get(t.id.as_str()).cloned().unwrap_or_default();
            let final_step_success = evaluations
                .iter()
                .find(|e| e.step == t.iterations && t.status == TrialStatus::Completed)
                .map(|e| (e.successes, e.episodes));
            let best = evaluations
                .iter()
                .max_by(|a, b| {
                    a.success_rate
                        .total_cmp(&b.success_rate)
                        .then(b.step.cmp(&a.step))
                })
                .map(|e| (e.step, e.success_rate));
            let variant = method_variant(&spec);
            let task = spec
                .task
                .build()
                .with_context(|| format!("trial {}: its recorded [task]", t.id))?;
            Ok(TrialDigest {
                id: t.id.clone(),
                status: t.status,
                setting,
                overrides,
                seed: spec.train.seed,
                policy: spec.policy.kind.clone(),
                variant,
                task: spec.task.kind().to_owned(),
                n_dim: task.info().action_dim,
                step: t.step,
                iterations: t.iterations,
                error: t.error.clone(),
                final_step_success,
                best,
                iterations_per_second: rates.get(t.id.as_str()).and_then(|rates| {
                    let time = logged_seconds(rates.iter().copied());
                    let steps = rates.last()?.0;
                    (time > 0.0).then(|| steps as f64 / time)
                }),
            })
        })
        .collect()
}

/// What sets a trial's method apart, named as the `baselines` table names IBC's runs.
///
/// An energy-based trial: how it trains and acts, `langevin` (Langevin counter-examples and
/// Langevin inference) or `uniform` (uniform counter-examples and DFO inference: IBC's
/// `dfo`); other pairings name both halves (and how many counter-examples are refined,
/// when not all) and match no published number. An explicit (MSE) trial: its network, as
/// IBC's configs give it (`width W, depth D`, two dense layers per residual block), since
/// IBC's MSE numbers come from two networks that differ as much as 5% and 100% at 2-D
/// (width 256, depth 2 in `mlp_mse.gin`; width 128, depth 16 in `mlp_mse_best.gin`).
pub fn method_variant(spec: &Spec) -> Option<String> {
    if spec.policy.kind == "mse" {
        return Some(format!(
            "width {}, depth {}",
            spec.policy.hidden,
            2 * spec.policy.blocks
        ));
    }
    if spec.policy.kind != "ebm" {
        return None;
    }
    let inference = match spec.eval.inference {
        InferenceKind::Dfo => "DFO",
        InferenceKind::Langevin => "Langevin",
        InferenceKind::AutoregressiveDfo => "autoregressive DFO",
    };
    let negatives = &spec.train.negatives;
    let fully_refined = negatives.refined_count() == negatives.count;
    Some(match (negatives.kind, spec.eval.inference) {
        (NegativeKind::Langevin, InferenceKind::Langevin) if fully_refined => "langevin".to_owned(),
        (NegativeKind::Uniform, InferenceKind::Dfo) => "uniform".to_owned(),
        (kind, _) => {
            let kind = match kind {
                NegativeKind::Uniform => "uniform",
                NegativeKind::Langevin => "langevin",
                NegativeKind::Dfo => "dfo",
            };
            let share = if fully_refined || negatives.kind == NegativeKind::Uniform {
                String::new()
            } else {
                format!(
                    " ({} of {} refined)",
                    negatives.refined_count(),
                    negatives.count
                )
            };
            format!("{kind} negatives{share}, {inference} inference")
        }
    })
}

impl TrialDigest {
    /// The method as figures and sentences name it: the policy and its variant.
    pub fn method(&self) -> String {
        match &self.variant {
            Some(v) => format!("{} ({v})", self.policy),
            None => self.policy.clone(),
        }
    }
}

/// The IBC number to put beside a setting: same task, dimension, method and variant (the
/// same training and inference, so like is compared with like) with a stated success
/// rate, preferring a source with a step count.
pub fn matching_baseline(
    baselines: &[Baseline],
    task: &str,
    policy: &str,
    variant: Option<&str>,
    n_dim: usize,
) -> Option<IbcNumber> {
    let wanted = variant.map(|v| if v == "uniform" { "dfo" } else { v });
    baselines
        .iter()
        .filter(|b| b.task == task && b.n_dim == n_dim as i64 && b.method == policy)
        .filter(|b| b.success_rate.is_some() && b.variant.as_deref() == wanted)
        .min_by_key(|b| b.steps.is_none())
        .map(|b| IbcNumber {
            source: b.source.clone(),
            success_rate: b.success_rate.unwrap_or_default(),
            variant: b.variant.clone(),
            steps: b.steps,
            note: b.note.clone(),
            reading_error: b.reading_error,
        })
}

/// Success rate and Wilson 95% interval of pooled episodes: (rate, low, high).
pub fn pooled_success(successes: i64, episodes: i64) -> Option<(f64, f64, f64)> {
    (episodes > 0).then(|| {
        let (low, high) = wilson_interval(successes as usize, episodes as usize, Z95);
        (successes as f64 / episodes as f64, low, high)
    })
}

/// Settings in the order of their overrides, key by key, numbers by value (N = 2 before
/// N = 16), other values by their text.
fn compare_overrides(
    a: &BTreeMap<String, serde_json::Value>,
    b: &BTreeMap<String, serde_json::Value>,
) -> std::cmp::Ordering {
    let value = |x: &serde_json::Value, y: &serde_json::Value| match (x.as_f64(), y.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => x.to_string().cmp(&y.to_string()),
    };
    a.iter()
        .zip(b)
        .map(|((ka, va), (kb, vb))| ka.cmp(kb).then_with(|| value(va, vb)))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// The setting rows of an experiment, ordered by their overrides ([`compare_overrides`]).
pub fn setting_rows(
    experiment: &str,
    trials: &[TrialDigest],
    baselines: &[Baseline],
) -> Vec<SettingRow> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&TrialDigest>> = BTreeMap::new();
    for t in trials {
        if !groups.contains_key(t.setting.as_str()) {
            order.push(&t.setting);
        }
        groups.entry(&t.setting).or_default().push(t);
    }
    order.sort_by(|a, b| compare_overrides(&groups[a][0].overrides, &groups[b][0].overrides));
    order
        .into_iter()
        .map(|setting| {
            let group = &groups[setting];
            let first = group[0];
            let finals: Vec<(i64, i64)> =
                group.iter().filter_map(|t| t.final_step_success).collect();
            let successes: i64 = finals.iter().map(|f| f.0).sum();
            let episodes: i64 = finals.iter().map(|f| f.1).sum();
            let pooled = pooled_success(successes, episodes);
            let (rate, ci) = (pooled.map(|p| p.0), pooled.map(|p| (p.1, p.2)));
            let best = group
                .iter()
                .filter_map(|t| t.best.map(|(s, r)| (t.id.clone(), s, r)))
                .max_by(|a, b| a.2.total_cmp(&b.2).then(b.1.cmp(&a.1)));
            let speeds: Vec<f64> = group
                .iter()
                .filter_map(|t| t.iterations_per_second)
                .collect();
            let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
            let its = mean(&speeds);
            let completed_speeds: Vec<f64> = group
                .iter()
                .filter(|t| t.status == TrialStatus::Completed)
                .filter_map(|t| t.iterations_per_second)
                .collect();
            let ibc = matching_baseline(
                baselines,
                &first.task,
                &first.policy,
                first.variant.as_deref(),
                first.n_dim,
            );
            let mut seeds: Vec<u64> = group.iter().map(|t| t.seed).collect();
            seeds.sort_unstable();
            SettingRow {
                experiment: experiment.to_owned(),
                setting: setting.to_owned(),
                policy: first.policy.clone(),
                variant: first.variant.clone(),
                task: first.task.clone(),
                n_dim: first.n_dim,
                trials: group.len(),
                completed: group
                    .iter()
                    .filter(|t| t.status == TrialStatus::Completed)
                    .count(),
                seeds,
                episodes,
                successes,
                success_rate: rate,
                ci_low: ci.map(|c| c.0),
                ci_high: ci.map(|c| c.1),
                best,
                final_step: first.iterations,
                train_seconds: mean(&completed_speeds)
                    .map(|s| first.iterations as f64 / s.max(1e-9)),
                iterations_per_second: its,
                difference_pp: match (rate, &ibc) {
                    (Some(r), Some(b)) => Some(100.0 * (r - b.success_rate)),
                    _ => None,
                },
                ibc,
                unfinished: group
                    .iter()
                    .filter(|t| t.status != TrialStatus::Completed)
                    .map(|t| format!("{} ({})", t.id, t.status))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline(
        n_dim: i64,
        method: &str,
        variant: Option<&str>,
        steps: Option<i64>,
        rate: Option<f64>,
    ) -> Baseline {
        Baseline {
            source: format!("{method}-{variant:?}-{steps:?}"),
            task: "particle".into(),
            n_dim,
            method: method.into(),
            variant: variant.map(str::to_owned),
            steps,
            episodes: None,
            success_rate: rate,
            note: String::new(),
            reading_error: None,
        }
    }

    #[test]
    fn training_speed_sums_each_windows_time() {
        let point = |step, value| CurvePoint {
            trial: "t".into(),
            name: "iterations_per_second".into(),
            step,
            value,
        };
        let rows = ExperimentRows {
            name: "e".into(),
            trials: vec![ReportTrial {
                experiment: "e".into(),
                id: "t".into(),
                overrides_json: r#"{"train.seed":3,"policy.kind":"mse"}"#.into(),
                config_json: serde_json::to_string(&Spec::default()).unwrap(),
                status: TrialStatus::Completed,
                step: 30,
                iterations: 30,
                error: None,
            }],
            evaluations: Vec::new(),
            // 10 steps at 10 it/s, 20 at 5 it/s: 5 s for 30 steps (the mean rate says 7.5).
            curves: vec![point(10, 10.0), point(30, 5.0)],
        };
        let digest = digest_trials(&rows).unwrap();
        assert_eq!(digest[0].iterations_per_second, Some(6.0));
        assert_eq!(
            digest[0].setting, "policy.kind=mse",
            "the seed is not part of a setting"
        );
        let row = &setting_rows("e", &digest, &[])[0];
        assert_eq!(
            (row.iterations_per_second, row.train_seconds),
            (Some(6.0), Some(5.0))
        );
        // Stopped before its end: its rate is measured, its training time is not.
        let mut killed = rows;
        killed.trials[0].status = TrialStatus::Killed;
        let row = &setting_rows("e", &digest_trials(&killed).unwrap(), &[])[0];
        assert_eq!(
            (row.iterations_per_second, row.train_seconds),
            (Some(6.0), None)
        );
    }

    #[test]
    fn settings_are_ordered_by_their_values_numbers_as_numbers() {
        let setting = |pairs: &[(&str, serde_json::Value)]| -> BTreeMap<String, serde_json::Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect()
        };
        use serde_json::json;
        let mut settings = [
            setting(&[("policy.kind", json!("mse")), ("task.n_dim", json!(2))]),
            setting(&[("task.n_dim", json!(16))]),
            setting(&[("policy.kind", json!("ar_ebm")), ("task.n_dim", json!(16))]),
            setting(&[("task.n_dim", json!(2))]),
            setting(&[("policy.kind", json!("ar_ebm")), ("task.n_dim", json!(4))]),
            setting(&[("task.n_dim", json!(8))]),
        ];
        settings.sort_by(compare_overrides);
        let names: Vec<String> = settings
            .iter()
            .map(|s| describe_settings(&serde_json::to_value(s).unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                "policy.kind=ar_ebm task.n_dim=4",
                "policy.kind=ar_ebm task.n_dim=16",
                "policy.kind=mse task.n_dim=2",
                "task.n_dim=2",
                "task.n_dim=8",
                "task.n_dim=16",
            ]
        );
    }

    /// The networks of IBC's two MSE configs, as `method_variant` names them.
    const README_MSE: &str = "width 256, depth 2";
    const BEST_MSE: &str = "width 128, depth 16";

    #[test]
    fn an_mse_trial_is_named_by_its_network_as_ibc_configs_give_it() {
        let mut spec = Spec::default();
        spec.policy.kind = "mse".into();
        assert_eq!(method_variant(&spec).as_deref(), Some(README_MSE));
        (spec.policy.hidden, spec.policy.blocks) = (128, 8);
        assert_eq!(method_variant(&spec).as_deref(), Some(BEST_MSE));
    }

    #[test]
    fn the_closest_published_number_is_chosen() {
        let all = [
            baseline(2, "ebm", Some("langevin"), None, Some(0.95)),
            baseline(2, "ebm", Some("langevin"), Some(10_000), Some(0.96)),
            baseline(2, "mse", Some(README_MSE), Some(10_000), Some(0.05)),
            baseline(2, "mse", Some(BEST_MSE), None, Some(1.0)),
            baseline(8, "mse", Some(BEST_MSE), None, None),
        ];
        let ebm = matching_baseline(&all, "particle", "ebm", Some("langevin"), 2).unwrap();
        assert_eq!((ebm.success_rate, ebm.steps), (0.96, Some(10_000)));
        // No DFO-trained number at 2-D, and the Langevin-trained one is another method.
        assert!(matching_baseline(&all, "particle", "ebm", Some("uniform"), 2).is_none());
        assert!(matching_baseline(
            &all,
            "particle",
            "ebm",
            Some("langevin negatives, DFO inference"),
            2
        )
        .is_none());
        // An MSE trial meets the number of its own network only.
        let mse = |network, n_dim| {
            matching_baseline(&all, "particle", "mse", Some(network), n_dim).map(|b| b.success_rate)
        };
        assert_eq!(mse(README_MSE, 2), Some(0.05));
        assert_eq!(mse(BEST_MSE, 2), Some(1.0));
        assert_eq!(mse("width 16, depth 2", 2), None);
        assert_eq!(mse(BEST_MSE, 8), None, "no stated rate");
        assert!(matching_baseline(&all, "particle", "ebm", None, 32).is_none());
        assert!(matching_baseline(&all, "point_mass", "mse", None, 2).is_none());
    }
}
