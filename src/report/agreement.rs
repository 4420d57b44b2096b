//! A sentence per method saying where its success agrees with IBC's published numbers and
//! where not. A result agrees when the published rate lies inside its Wilson 95% interval
//! (give or take the rate's reading error, where it is read from a plot); the claims IBC
//! states without a number (the `baselines` rows with no rate) are quoted.

use std::collections::BTreeMap;

use super::model::{matching_baseline, pooled_success, TrialDigest};
use crate::store::Baseline;

/// One method's pooled result at one dimension.
#[derive(Debug, Clone, Copy)]
struct Point {
    n_dim: usize,
    successes: i64,
    episodes: i64,
}

/// The sentences, one per method (policy and variant) of the completed trials.
pub fn method_sentences(trials: &[TrialDigest], baselines: &[Baseline]) -> Vec<String> {
    let mut methods: BTreeMap<String, (&TrialDigest, BTreeMap<usize, Point>)> = BTreeMap::new();
    for t in trials {
        let Some((s, n)) = t.final_step_success else {
            continue;
        };
        let (_, points) = methods.entry(t.method()).or_insert((t, BTreeMap::new()));
        let p = points.entry(t.n_dim).or_insert(Point {
            n_dim: t.n_dim,
            successes: 0,
            episodes: 0,
        });
        p.successes += s;
        p.episodes += n;
    }
    methods
        .into_iter()
        .map(|(method, (first, points))| {
            sentence(&method, first, points.values().copied(), baselines)
        })
        .collect()
}

fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

fn dims(ns: &[usize]) -> String {
    ns.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn sentence(
    method: &str,
    first: &TrialDigest,
    points: impl Iterator<Item = Point>,
    baselines: &[Baseline],
) -> String {
    let (mut agree, mut differ, mut unpublished) = (Vec::new(), Vec::new(), Vec::new());
    let mut tested = Vec::new();
    for p in points {
        tested.push(p.n_dim);
        let Some((rate, low, high)) = pooled_success(p.successes, p.episodes) else {
            continue;
        };
        match matching_baseline(
            baselines,
            &first.task,
            &first.policy,
            first.variant.as_deref(),
            p.n_dim,
        ) {
            Some(ibc) if ibc.agrees_with(low, high) => agree.push(p.n_dim),
            Some(ibc) => differ.push(format!(
                "{} at N = {} ({} [{:.0}, {:.0}] of {} episodes vs {}, {})",
                if high < ibc.success_rate {
                    "below IBC"
                } else {
                    "above IBC"
                },
                p.n_dim,
                pct(rate),
                100.0 * low,
                100.0 * high,
                p.episodes,
                pct(ibc.success_rate),
                ibc.source
            )),
            None => unpublished.push(p.n_dim),
        }
    }
    let mut parts = Vec::new();
    if !agree.is_empty() {
        parts.push(format!(
            "agrees with IBC at N = {} (the published rate, give or take its reading error, \
             inside our 95% interval)",
            dims(&agree)
        ));
    }
    parts.extend(differ);
    if !unpublished.is_empty() {
        parts.push(format!(
            "IBC publishes no rate for this method at N = {}",
            dims(&unpublished)
        ));
    }
    let wanted = first
        .variant
        .as_deref()
        .map(|v| if v == "uniform" { "dfo" } else { v });
    // Claims made at a dimension within the range studied, each once.
    let (lowest, highest) = (
        tested.first().copied().unwrap_or(0),
        tested.last().copied().unwrap_or(0),
    );
    let mut claims: Vec<String> = Vec::new();
    for b in baselines
        .iter()
        .filter(|b| b.task == first.task && b.method == first.policy)
        .filter(|b| b.success_rate.is_none() && b.variant.as_deref() == wanted)
        .filter(|b| (lowest as i64..=highest as i64).contains(&b.n_dim))
    {
        let claim = format!("{} ({})", b.note, b.source);
        if !claims.contains(&claim) {
            claims.push(claim);
        }
    }
    let mut text = format!("{method}: {}.", parts.join("; "));
    if !claims.is_empty() {
        text.push_str(&format!(" IBC states: {}.", claims.join("; ")));
    }
    if !unpublished.is_empty() {
        if let Some(other) = nearest_other_method(first, baselines, unpublished[0]) {
            text.push_str(&format!(
                " The closest published method at N = {}: {other}.",
                unpublished[0]
            ));
        }
    }
    text
}

/// Another method's number at the same task and dimension, to say what a result without
/// a like-for-like number sits near (not to compare it with).
fn nearest_other_method(
    first: &TrialDigest,
    baselines: &[Baseline],
    n_dim: usize,
) -> Option<String> {
    baselines
        .iter()
        .filter(|b| b.task == first.task && b.n_dim == n_dim as i64)
        .filter(|b| b.method == first.policy || first.policy == "ar_ebm" && b.method == "ebm")
        .filter_map(|b| Some((b, b.success_rate?)))
        .min_by_key(|(b, _)| b.steps.is_none())
        .map(|(b, rate)| {
            format!(
                "{} {} {} ({}{})",
                b.method,
                b.variant.as_deref().unwrap_or(""),
                pct(rate),
                b.source,
                b.steps
                    .map_or(String::new(), |s| format!(", {}k steps", s / 1000))
            )
            .replace("  ", " ")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TrialStatus;

    fn trial(policy: &str, variant: Option<&str>, n_dim: usize, successes: i64) -> TrialDigest {
        TrialDigest {
            id: format!("{policy}-{n_dim}-{successes}"),
            status: TrialStatus::Completed,
            setting: String::new(),
            overrides: BTreeMap::new(),
            seed: 0,
            policy: policy.into(),
            variant: variant.map(str::to_owned),
            task: "particle".into(),
            n_dim,
            step: 10,
            iterations: 10,
            error: None,
            final_step_success: Some((successes, 100)),
            best: None,
            iterations_per_second: None,
        }
    }

    fn published(n_dim: i64, method: &str, variant: Option<&str>, rate: Option<f64>) -> Baseline {
        Baseline {
            source: "Fig".into(),
            task: "particle".into(),
            n_dim,
            method: method.into(),
            variant: variant.map(str::to_owned),
            steps: None,
            episodes: None,
            success_rate: rate,
            note: format!("claim at {n_dim}"),
            reading_error: None,
        }
    }

    #[test]
    fn a_rate_read_from_a_plot_agrees_within_its_reading_error() {
        // 98 of 100: Wilson interval [93.0, 99.4], which misses a printed 100%.
        let trials = [trial("mse", None, 2, 98)];
        let printed = [published(2, "mse", None, Some(1.0))];
        let sentence = &method_sentences(&trials, &printed)[0];
        assert!(
            sentence.starts_with("mse: below IBC at N = 2 (98% [93, 99]"),
            "{sentence}"
        );
        // Read by eye to within 0.05, 100% may be 95%, inside the interval.
        let read = [Baseline {
            reading_error: Some(0.05),
            ..printed[0].clone()
        }];
        let sentence = &method_sentences(&trials, &read)[0];
        assert!(
            sentence.starts_with("mse: agrees with IBC at N = 2"),
            "{sentence}"
        );
        // But not 90 of 100 ([82.6, 94.5]): 95% lies above it.
        let trials = [trial("mse", None, 2, 90)];
        let sentence = &method_sentences(&trials, &read)[0];
        assert!(
            sentence.starts_with("mse: below IBC at N = 2 (90%"),
            "{sentence}"
        );
    }

    #[test]
    fn agreement_is_the_published_rate_inside_the_interval() {
        // Two seeds of 100 episodes: 196/200 at N = 2 (interval about [95, 99]), 100/200 at
        // N = 16 (about [43, 57]), 20/200 at N = 32.
        let trials = [
            trial("ebm", Some("langevin"), 2, 98),
            trial("ebm", Some("langevin"), 2, 98),
            trial("ebm", Some("langevin"), 16, 50),
            trial("ebm", Some("langevin"), 16, 50),
            trial("ebm", Some("langevin"), 32, 20),
            trial("mse", None, 2, 0),
        ];
        let baselines = [
            published(2, "ebm", Some("langevin"), Some(0.97)),
            published(16, "ebm", Some("langevin"), Some(0.99)),
            published(2, "mse", None, Some(0.05)),
            published(32, "ebm", Some("langevin"), None),
        ];
        let sentences = method_sentences(&trials, &baselines);
        assert_eq!(sentences.len(), 2, "{sentences:?}");
        let ebm = &sentences[0];
        assert!(
            ebm.starts_with("ebm (langevin): agrees with IBC at N = 2 "),
            "{ebm}"
        );
        assert!(
            ebm.contains("below IBC at N = 16 (50% [43, 57] of 200 episodes vs 99%"),
            "{ebm}"
        );
        assert!(ebm.contains("no rate for this method at N = 32"), "{ebm}");
        assert!(ebm.contains("IBC states: claim at 32 (Fig)"), "{ebm}");
        assert!(
            sentences[1].starts_with("mse: below IBC at N = 2 (0% [0, 4]"),
            "{}",
            sentences[1]
        );
    }

    #[test]
    fn a_method_ibc_never_ran_is_told_apart_from_its_neighbour() {
        let trials = [trial("ebm", Some("uniform"), 2, 85)];
        let baselines = [published(2, "ebm", Some("langevin"), Some(0.96))];
        let sentences = method_sentences(&trials, &baselines);
        assert_eq!(
            sentences,
            [
                "ebm (uniform): IBC publishes no rate for this method at N = 2. The closest \
              published method at N = 2: ebm langevin 96% (Fig)."
            ]
        );
    }
}
