//! The lines of a success-against figure: a line per setting apart from the axis key
//! (trials that differ only in the axis and the seed), pooled over seeds, named by its
//! method, with IBC's published rates of that method.

use std::collections::BTreeMap;

use super::figures::RateSeries;
use super::model::{matching_baseline, pooled_success, TrialDigest};
use crate::spec::describe_settings;
use crate::store::Baseline;

/// The lines against `key` (`x_of` gives a trial's value of it; `published`: whether the
/// axis is the task's dimension, where IBC's rates of the same method are drawn too).
/// Empty where no line has two values of the axis: one value says no more than the
/// table does, and neither do lines that each sit at one value (an MSE 256 wide beside
/// an EBM 16 wide, against the width).
pub fn rate_lines(
    trials: &[TrialDigest],
    key: &str,
    x_of: impl Fn(&TrialDigest) -> Option<f64>,
    baselines: &[Baseline],
    published: bool,
) -> Vec<RateSeries> {
    let line_of = |t: &TrialDigest| {
        let mut rest = t.overrides.clone();
        rest.remove(key);
        describe_settings(&serde_json::Value::Object(rest.into_iter().collect()))
    };
    // (line, x) -> successes, episodes, x, a trial of it
    let mut pooled: BTreeMap<(String, i64), (i64, i64, f64, &TrialDigest)> = BTreeMap::new();
    for t in trials {
        let (Some((s, n)), Some(x)) = (t.final_step_success, x_of(t)) else {
            continue;
        };
        let entry = pooled
            .entry((line_of(t), (x * 1e6) as i64))
            .or_insert((0, 0, x, t));
        entry.0 += s;
        entry.1 += n;
    }
    // Each line: how many values of the axis it has, and a trial of it.
    let mut lines: BTreeMap<&str, (usize, &TrialDigest)> = BTreeMap::new();
    for ((line, _), (_, _, _, t)) in &pooled {
        lines.entry(line).or_insert((0, t)).0 += 1;
    }
    if lines.values().all(|&(values, _)| values < 2) {
        return Vec::new();
    }
    // Labelled by the method, and by the setting too where a method has several lines.
    let mut lines_per_method: BTreeMap<String, usize> = BTreeMap::new();
    for (_, t) in lines.values() {
        *lines_per_method.entry(t.method()).or_default() += 1;
    }
    let label_of = |line: &str, t: &TrialDigest| match lines_per_method[&t.method()] {
        1 => t.method(),
        _ => format!("{}: {line}", t.method()),
    };
    let mut series: BTreeMap<String, RateSeries> = BTreeMap::new();
    for ((line, _), (s, n, x, t)) in &pooled {
        let Some((rate, lo, hi)) = pooled_success(*s, *n) else {
            continue;
        };
        let label = label_of(line, t);
        let entry = series.entry(label.clone()).or_insert_with(|| RateSeries {
            label,
            points: Vec::new(),
            published: Vec::new(),
        });
        entry.points.push((*x, rate, lo, hi));
        if published {
            let variant = t.variant.as_deref();
            if let Some(ibc) = matching_baseline(baselines, &t.task, &t.policy, variant, t.n_dim) {
                entry.published.push((*x, ibc.success_rate));
            }
        }
    }
    series.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TrialStatus;

    /// A completed trial of `overrides` (plus its N) at N = `n_dim`, seed `seed`.
    fn trial(
        overrides: &[(&str, serde_json::Value)],
        n_dim: usize,
        seed: u64,
        successes: i64,
    ) -> TrialDigest {
        let mut map: BTreeMap<String, serde_json::Value> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        map.insert("task.n_dim".into(), n_dim.into());
        let policy = map
            .get("policy.kind")
            .and_then(|v| v.as_str())
            .unwrap_or("ebm")
            .to_owned();
        TrialDigest {
            id: format!("{map:?}-{seed}"),
            status: TrialStatus::Completed,
            setting: describe_settings(&serde_json::to_value(&map).unwrap()),
            overrides: map,
            seed,
            variant: (policy == "mse").then(|| "width 128, depth 16".to_owned()),
            policy,
            task: "particle".into(),
            n_dim,
            step: 10,
            iterations: 10,
            error: None,
            final_step_success: Some((successes, 10)),
            best: None,
            iterations_per_second: None,
        }
    }

    fn lines(trials: &[TrialDigest]) -> Vec<RateSeries> {
        rate_lines(trials, "task.n_dim", |t| Some(t.n_dim as f64), &[], true)
    }

    #[test]
    fn seeds_pool_into_one_point_and_settings_of_one_method_stay_apart() {
        let mse = |dropout: f64| -> [(&str, serde_json::Value); 2] {
            [
                ("policy.kind", "mse".into()),
                ("policy.dropout", dropout.into()),
            ]
        };
        let trials = [
            trial(&mse(0.1), 2, 0, 9),
            trial(&mse(0.1), 2, 1, 7),
            trial(&mse(0.1), 4, 0, 5),
            trial(&mse(0.0), 2, 0, 1),
            trial(&mse(0.0), 4, 0, 0),
            trial(&[("policy.kind", "ebm".into())], 2, 0, 10),
            trial(&[("policy.kind", "ebm".into())], 4, 0, 8),
        ];
        let lines = lines(&trials);
        let labels: Vec<&str> = lines.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "ebm",
                "mse (width 128, depth 16): policy.dropout=0.0 policy.kind=mse",
                "mse (width 128, depth 16): policy.dropout=0.1 policy.kind=mse",
            ]
        );
        // Two seeds at N = 2: 16 of 20.
        let points = &lines[2].points;
        assert_eq!(
            points.iter().map(|p| (p.0, p.1)).collect::<Vec<_>>(),
            [(2.0, 0.8), (4.0, 0.5)]
        );
        let (low, high) = crate::eval::wilson_interval(16, 20, crate::eval::Z95);
        assert_eq!((points[0].2, points[0].3), (low, high));
    }

    #[test]
    fn no_lines_where_each_sits_at_one_value() {
        let trials = [
            trial(&[("policy.kind", "ebm".into())], 2, 0, 10),
            trial(&[("policy.kind", "mse".into())], 4, 0, 8),
        ];
        assert!(lines(&trials).is_empty());
        assert_eq!(lines(&trials[..1]).len(), 0);
    }
}
