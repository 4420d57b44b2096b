//! Reading a spec: built-in defaults < the `extends` chain < the file < `EBMLAB_*`
//! environment variables < `--set key=value`, merged with figment. Every key a layer sets
//! must exist in the spec (checked here, so the error names the file and the key).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};

use super::model::{EvalSpec, Spec};
use crate::task::TaskConfig;

/// Prefix of environment variables that override spec keys: `EBMLAB_TRAIN__ITERATIONS=10`
/// sets `train.iterations` (double underscore between levels).
pub const ENV_PREFIX: &str = "EBMLAB_";

/// Keys whose values are free-form tables, or lists of them (`trials`): their inner keys
/// are checked as dotted spec keys.
const FREE_TABLES: &[&str] = &["sweep", "trials"];
/// Optional keys that have no default value, or that the resolved spec leaves out at
/// their defaults (keys added after trial ids were first made: see `trial_id`).
const OPTIONAL_KEYS: &[&str] = &[
    "extends",
    "data.path",
    "train.precision",
    "train.negatives.refined_fraction",
    "train.negatives.dfo_iters",
    "train.negatives.dfo_noise_scale",
    "eval.precision",
    "resources.pack",
    "resources.cuda_graphs",
    "resources.mps",
];
/// `EBMLAB_*` variables that set top-level spec keys; below the top, a spec key's
/// variable has `__` between its levels (`EBMLAB_TRAIN__ITERATIONS`). Any other `EBMLAB_*`
/// variable (`EBMLAB_DB`, `EBMLAB_LOG`, ...) is a setting of the tool, not of the spec.
const TOP_LEVEL_VARIABLES: &[&str] = &["NAME", "EXTENDS"];

/// A resolved spec and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec: Spec,
    /// The files merged, base first.
    pub files: Vec<PathBuf>,
}

/// Every dotted key a spec of the default task may set (tables included).
pub fn known_keys() -> BTreeSet<String> {
    known_keys_for(&Spec::default())
}

/// Every dotted key a spec may set, given its defaults (the task's keys depend on its kind).
fn known_keys_for(defaults: &Spec) -> BTreeSet<String> {
    let value = toml::Value::try_from(defaults).expect("the default spec serializes");
    let mut keys = BTreeSet::new();
    collect_keys(&value, "", &mut keys);
    // `[slurm]` is left out of a spec while at its defaults; its keys are known all the same.
    let slurm = toml::Value::try_from(super::SlurmSpec::default()).expect("serializes");
    keys.insert("slurm".to_owned());
    collect_keys(&slurm, "slurm", &mut keys);
    keys.extend(OPTIONAL_KEYS.iter().map(|k| k.to_string()));
    keys.extend(FREE_TABLES.iter().map(|k| k.to_string()));
    keys
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn collect_keys(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(table) = value {
        for (k, v) in table {
            let key = join(prefix, k);
            out.insert(key.clone());
            collect_keys(v, &key, out);
        }
    }
}

/// Checks that every key of `table` (from `origin`) is a spec key.
fn check_table(
    table: &toml::Table,
    prefix: &str,
    known: &BTreeSet<String>,
    origin: &str,
) -> Result<()> {
    for (k, v) in table {
        let key = join(prefix, k);
        if !known.contains(&key) {
            bail!("{origin}: unknown key `{key}`{}", suggestion(&key, known));
        }
        match v {
            toml::Value::Table(sweep) if FREE_TABLES.contains(&key.as_str()) => {
                for swept in sweep.keys() {
                    check_key(swept, known, &format!("{origin}: [{key}]"))?;
                }
            }
            toml::Value::Array(list) if FREE_TABLES.contains(&key.as_str()) => {
                for (i, item) in list.iter().enumerate() {
                    let toml::Value::Table(trial) = item else {
                        bail!("{origin}: `{key}[{i}]` must be a table of dotted keys");
                    };
                    for k in trial.keys() {
                        check_key(k, known, &format!("{origin}: {key}[{i}]"))?;
                    }
                }
            }
            toml::Value::Table(inner) => check_table(inner, &key, known, origin)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks one dotted key that a single value is assigned to.
pub fn check_key(key: &str, known: &BTreeSet<String>, origin: &str) -> Result<()> {
    if !known.contains(key) || FREE_TABLES.contains(&key) {
        bail!("{origin}: unknown key `{key}`{}", suggestion(key, known));
    }
    Ok(())
}

/// The keys of the section `key` is in, to help with a typo.
fn suggestion(key: &str, known: &BTreeSet<String>) -> String {
    let section = key.rsplit_once('.').map_or("", |(s, _)| s);
    let siblings: Vec<&str> = known
        .iter()
        .filter_map(|k| {
            let (s, leaf) = k.rsplit_once('.').unwrap_or(("", k));
            (s == section).then_some(leaf)
        })
        .collect();
    if siblings.is_empty() {
        String::new()
    } else {
        format!(" (keys here: {})", siblings.join(", "))
    }
}

fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading spec file {}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| anyhow!("{}: not valid TOML: {e}", path.display()))
}

/// The `extends` chain of `file`, base first, with each file's table; cycles refused.
fn extends_chain(file: &Path) -> Result<Vec<(PathBuf, toml::Table)>> {
    let mut chain: Vec<(PathBuf, toml::Table)> = Vec::new();
    let mut next = Some((file.to_path_buf(), None::<PathBuf>));
    while let Some((path, named_by)) = next.take() {
        let canonical = path.canonicalize().map_err(|_| match &named_by {
            Some(by) => anyhow!(
                "{}: key `extends`: spec file {} not found",
                by.display(),
                path.display()
            ),
            None => anyhow!("spec file {} not found", path.display()),
        })?;
        if chain.iter().any(|(p, _)| p == &canonical) {
            let mut names: Vec<String> =
                chain.iter().map(|(p, _)| p.display().to_string()).collect();
            names.push(canonical.display().to_string());
            bail!("cyclic `extends`: {}", names.join(" -> "));
        }
        let table = read_table(&canonical)?;
        if let Some(base) = table.get("extends") {
            let base = base.as_str().ok_or_else(|| {
                anyhow!(
                    "{}: key `extends` must be a file path (a string)",
                    canonical.display()
                )
            })?;
            let dir = canonical.parent().unwrap_or(Path::new("."));
            next = Some((dir.join(base), Some(canonical.clone())));
        }
        chain.push((canonical, table));
    }
    chain.reverse();
    Ok(chain)
}

/// The task kind the layers choose (the last one that sets `task.kind`), with the place
/// that chose it.
fn task_kind<'a>(layers: impl IntoIterator<Item = (String, &'a toml::Value)>) -> (String, String) {
    let mut kind = (
        TaskConfig::default().kind().to_owned(),
        "the defaults".to_owned(),
    );
    for (origin, value) in layers {
        if let Some(k) = value.as_str() {
            kind = (k.to_owned(), origin);
        } else {
            kind = (value.to_string(), origin);
        }
    }
    kind
}

/// A layer of values with a name that errors show (`--set ...`, an environment variable).
struct Named {
    name: String,
    inner: Serialized<toml::Value>,
}

impl Provider for Named {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }
    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        self.inner.data()
    }
}

/// Figment's errors, one per line, each as `SOURCE: key `a.b`: problem` (without the
/// profile figment puts in front of the key).
fn describe_extract_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let source = match &e.metadata {
                Some(m) => match &m.source {
                    Some(figment::Source::File(path)) => path.display().to_string(),
                    _ => m.name.to_string(),
                },
                None => "the spec".to_owned(),
            };
            if e.path.is_empty() {
                format!("{source}: {}", e.kind)
            } else {
                format!("{source}: key `{}`: {}", e.path.join("."), e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The layer of a `--set sweep.KEY=[...]` item: the list of values swept for `KEY` (a
/// dotted spec key, kept whole: `sweep.task.n_dim` sweeps `task.n_dim`), in place of the
/// spec's list for that key; the other swept keys stay.
fn sweep_layer(
    swept: &str,
    value: toml::Value,
    known: &BTreeSet<String>,
    origin: &str,
) -> Result<Serialized<toml::Value>> {
    check_key(swept, known, &format!("{origin}: [sweep]"))?;
    if !matches!(&value, toml::Value::Array(list) if !list.is_empty()) {
        bail!("{origin}: a swept key takes a non-empty list of values, e.g. [2, 4]");
    }
    let mut sweep = toml::Table::new();
    sweep.insert(swept.to_owned(), value);
    let mut top = toml::Table::new();
    top.insert("sweep".to_owned(), toml::Value::Table(sweep));
    Ok(Serialized::globals(toml::Value::Table(top)))
}

/// Parses a `--set` value as TOML (numbers, booleans, arrays, quoted strings); anything
/// else is taken as a bare string.
fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

/// One `--set KEY=VALUE` item: where it came from (for errors), its key and its value.
fn parse_set_item(item: &str) -> Result<(String, String, toml::Value)> {
    let origin = format!("--set {item}");
    let (key, value) = item
        .split_once('=')
        .ok_or_else(|| anyhow!("{origin}: expected KEY=VALUE"))?;
    Ok((origin, key.trim().to_owned(), parse_value(value.trim())))
}

/// `--set eval.KEY=VALUE` items applied to an evaluation's settings (`ebmlab eval`, which
/// has no spec file): only `eval.*` keys, typed and checked as in a spec, so an unknown
/// key or a wrong type is an error naming the item.
pub fn override_eval(eval: &EvalSpec, overrides: &[String]) -> Result<EvalSpec> {
    let known: BTreeSet<String> = known_keys()
        .into_iter()
        .filter(|k| k.starts_with("eval."))
        .collect();
    let mut figment = Figment::from(Serialized::defaults(eval));
    for item in overrides {
        let (origin, key, value) = parse_set_item(item)?;
        let Some(inner_key) = key.strip_prefix("eval.") else {
            bail!("{origin}: `ebmlab eval` takes `eval.*` keys only (e.g. eval.iters=5)");
        };
        check_key(&key, &known, &origin)?;
        figment = figment.merge(Named {
            name: origin,
            inner: Serialized::global(inner_key, value),
        });
    }
    let eval: EvalSpec = figment
        .extract()
        .map_err(|e| anyhow!("invalid --set:\n{}", describe_extract_error(e)))?;
    super::validate::validate_eval(&eval)?;
    Ok(eval)
}

/// Loads `file` with all its layers; `overrides` are `key=value` pairs (`--set`).
pub fn load_spec(file: &Path, overrides: &[String]) -> Result<LoadedSpec> {
    load_spec_with_env(file, overrides, std::env::vars())
}

/// [`load_spec`] with the environment given explicitly (tests).
pub fn load_spec_with_env(
    file: &Path,
    overrides: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<LoadedSpec> {
    let chain = extends_chain(file)?;
    // `EBMLAB_*` variables and `--set` items as (origin, dotted key, value).
    let mut sets: Vec<(String, String, toml::Value)> = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") && !TOP_LEVEL_VARIABLES.contains(&rest) {
            continue;
        }
        let key = rest.to_lowercase().replace("__", ".");
        sets.push((
            format!("environment variable {name}"),
            key,
            parse_value(&value),
        ));
    }
    for item in overrides {
        sets.push(parse_set_item(item)?);
    }

    // The task's kind decides its keys and defaults, so it is read first.
    let file_kinds = chain.iter().filter_map(|(path, table)| {
        let kind = table.get("task")?.get("kind")?;
        Some((path.display().to_string(), kind))
    });
    let set_kinds = sets
        .iter()
        .filter(|(_, key, _)| key == "task.kind")
        .map(|(origin, _, value)| (origin.clone(), value));
    let (kind, origin) = task_kind(file_kinds.chain(set_kinds));
    let defaults = Spec {
        task: TaskConfig::default_for(&kind).map_err(|e| anyhow!("{origin}: task.kind: {e}"))?,
        ..Spec::default()
    };
    let known = known_keys_for(&defaults);
    for (path, table) in &chain {
        check_table(table, "", &known, &path.display().to_string())?;
    }
    let mut figment = Figment::from(Serialized::defaults(defaults));
    for (path, _) in &chain {
        figment = figment.merge(Toml::file_exact(path));
    }
    for (origin, key, value) in sets {
        let inner = match key.strip_prefix("sweep.") {
            Some(swept) => sweep_layer(swept, value, &known, &origin)?,
            None => {
                check_key(&key, &known, &origin)?;
                Serialized::global(&key, value)
            }
        };
        figment = figment.merge(Named {
            name: origin,
            inner,
        });
    }
    let mut spec: Spec = figment.extract().map_err(|e| {
        anyhow!(
            "invalid spec {}:\n{}",
            file.display(),
            describe_extract_error(e)
        )
    })?;
    spec.extends = None;
    super::validate::validate(&spec).with_context(|| format!("invalid spec {}", file.display()))?;
    Ok(LoadedSpec {
        spec,
        files: chain.into_iter().map(|(path, _)| path).collect(),
    })
}
