//! An experiment's trials: the cartesian product of `[sweep]`, crossed with the explicit
//! `trials` list, each applied on top of the resolved spec.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context, Result};

use super::model::Spec;
use super::validate::validate;

/// One trial: the settings that set it apart, and its full spec.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialPlan {
    pub overrides: BTreeMap<String, toml::Value>,
    pub spec: Spec,
}

impl TrialPlan {
    pub fn id(&self) -> String {
        self.spec.trial_id()
    }

    /// `key=value` pairs, for listings.
    pub fn describe(&self) -> String {
        describe_settings(&serde_json::to_value(&self.overrides).unwrap_or_default())
    }
}

/// `key=value key=value` for a trial's settings (a JSON object of dotted keys, as the
/// store records them; strings unquoted), or `(base spec)` when there are none.
pub fn describe_settings(settings: &serde_json::Value) -> String {
    let mut pairs: Vec<String> = settings
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| match v {
            serde_json::Value::String(text) => format!("{k}={text}"),
            other => format!("{k}={other}"),
        })
        .collect();
    // Keys in order, whatever order the JSON came in.
    pairs.sort();
    if pairs.is_empty() {
        "(base spec)".into()
    } else {
        pairs.join(" ")
    }
}

/// Sets dotted `key` of a spec serialized as TOML.
fn set_key(root: &mut toml::Value, key: &str, value: toml::Value) -> Result<()> {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = node
            .get_mut(*part)
            .ok_or_else(|| anyhow!("no section `{part}` for key `{key}`"))?;
    }
    let table = node
        .as_table_mut()
        .ok_or_else(|| anyhow!("`{key}` is not inside a table"))?;
    table.insert(parts[parts.len() - 1].to_owned(), value);
    Ok(())
}

/// The spec with `overrides` applied, checked like a spec file.
fn apply(base: &Spec, overrides: &BTreeMap<String, toml::Value>) -> Result<Spec> {
    let mut value = toml::Value::try_from(base).context("serializing the spec")?;
    for (key, v) in overrides {
        set_key(&mut value, key, v.clone())?;
    }
    let spec: Spec = value.try_into().map_err(|e: toml::de::Error| {
        let keys: Vec<&str> = overrides.keys().map(String::as_str).collect();
        anyhow!("trial with {}: {}", keys.join(", "), e.message())
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// Every trial of `spec`, in a stable order (sweep keys sorted, values as listed).
pub fn expand_trials(spec: &Spec) -> Result<Vec<TrialPlan>> {
    let mut base = spec.clone();
    base.sweep.clear();
    base.trials.clear();

    let mut points: Vec<BTreeMap<String, toml::Value>> = vec![BTreeMap::new()];
    for (key, values) in &spec.sweep {
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut p = point.clone();
                    p.insert(key.clone(), v.clone());
                    p
                })
            })
            .collect();
    }
    let listed: Vec<BTreeMap<String, toml::Value>> = if spec.trials.is_empty() {
        vec![BTreeMap::new()]
    } else {
        spec.trials.clone()
    };

    let mut plans = Vec::with_capacity(points.len() * listed.len());
    let mut seen = BTreeSet::new();
    for item in &listed {
        for point in &points {
            let mut overrides = item.clone();
            for (k, v) in point {
                if overrides.contains_key(k) {
                    bail!("key `{k}` is set both in `trials` and in `[sweep]`");
                }
                overrides.insert(k.clone(), v.clone());
            }
            let spec = apply(&base, &overrides)?;
            let plan = TrialPlan { overrides, spec };
            if !seen.insert(plan.id()) {
                bail!(
                    "two trials resolve to the same config ({}): remove the repeated value",
                    plan.describe()
                );
            }
            plans.push(plan);
        }
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::describe_settings;

    #[test]
    fn settings_read_as_key_value_pairs() {
        let settings =
            serde_json::json!({"policy.kind": "mse", "train.lr": 0.001, "task.n_dim": 4});
        assert_eq!(
            describe_settings(&settings),
            "policy.kind=mse task.n_dim=4 train.lr=0.001"
        );
        assert_eq!(describe_settings(&serde_json::json!({})), "(base spec)");
    }
}
