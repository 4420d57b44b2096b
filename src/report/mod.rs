//! `ebmlab report`: tables, learning curves and trajectories of experiments beside IBC's
//! published numbers, made from the results database alone (so a report can be made while
//! a sweep still runs; unfinished trials are marked).

mod figures;
mod model;
mod render;
mod trajectories;

pub use model::{
    digest_trials, matching_baseline, pooled_success, setting_rows, ExperimentRows, SettingRow,
    TrialDigest,
};
pub use render::{html, markdown, ExperimentSection, Figure, Report};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tracing::warn;

use crate::spec::Spec;
use crate::store::{block_on, now, Baseline, Store};
use figures::{RateSeries, SeedCurves};

/// What to put in a report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub out: PathBuf,
    /// Evaluation episodes of the best trial to draw (0: none; they are re-simulated).
    pub trajectories: usize,
}

/// The files a report wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
    pub figures: Vec<PathBuf>,
}

/// Writes `report.md`, `report.html`, `report.json` and `figures/` for `experiments`.
pub fn write_report(
    db: &Path,
    experiments: &[String],
    options: &ReportOptions,
) -> Result<ReportFiles> {
    let (rows, baselines) = block_on(async {
        let store = Store::open(db).await?;
        let mut all = Vec::new();
        for name in experiments {
            let trials = store.report_trials(name).await?;
            if trials.is_empty() {
                bail!("no trials of experiment `{name}` in {}", db.display());
            }
            all.push(ExperimentRows {
                name: name.clone(),
                trials,
                evaluations: store.report_evaluations(name).await?,
                curves: store
                    .report_curves(name, &["loss", "iterations_per_second"])
                    .await?,
            });
        }
        anyhow::Ok((all, store.baselines().await?))
    })?;
    let figures_dir = options.out.join("figures");
    std::fs::create_dir_all(&figures_dir)
        .with_context(|| format!("creating {}", figures_dir.display()))?;
    let mut sections = Vec::new();
    let mut written = Vec::new();
    for experiment in &rows {
        let section = experiment_section(
            db,
            experiment,
            &baselines,
            &options.out,
            options.trajectories,
        )?;
        written.extend(section.figures.iter().map(|f| options.out.join(&f.file)));
        sections.push(section);
    }
    let report = Report {
        title: format!("ebmlab report: {}", experiments.join(", ")),
        generated: now(),
        database: db.display().to_string(),
        comparison: if sections.len() > 1 {
            sections.iter().flat_map(|s| s.settings.clone()).collect()
        } else {
            Vec::new()
        },
        experiments: sections,
        baselines,
    };
    let files = ReportFiles {
        markdown: options.out.join("report.md"),
        html: options.out.join("report.html"),
        json: options.out.join("report.json"),
        figures: written,
    };
    std::fs::write(&files.markdown, markdown(&report))
        .with_context(|| format!("writing {}", files.markdown.display()))?;
    std::fs::write(&files.html, html(&report, &options.out))
        .with_context(|| format!("writing {}", files.html.display()))?;
    let settings: Vec<&SettingRow> = report
        .experiments
        .iter()
        .flat_map(|e| &e.settings)
        .collect();
    std::fs::write(&files.json, serde_json::to_string_pretty(&settings)? + "\n")
        .with_context(|| format!("writing {}", files.json.display()))?;
    Ok(files)
}

/// A file name part made of the name's safe characters.
fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn experiment_section(
    db: &Path,
    rows: &ExperimentRows,
    baselines: &[Baseline],
    out: &Path,
    trajectories: usize,
) -> Result<ExperimentSection> {
    let trials = digest_trials(rows)?;
    let settings = setting_rows(&rows.name, &trials, baselines);
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    for t in trials.iter().filter(|t| t.status != "completed") {
        let why = t
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .unwrap_or("");
        notes.push(format!(
            "trial {} ({}) is {} at step {}/{}{}{}: not in the success column",
            t.id,
            t.setting,
            t.status.to_uppercase(),
            t.step,
            t.iterations,
            if why.is_empty() { "" } else { ": " },
            why
        ));
    }

    // Learning curves, one figure per setting.
    for (k, setting) in settings.iter().enumerate() {
        let seeds: Vec<SeedCurves> = trials
            .iter()
            .filter(|t| t.setting == setting.setting)
            .map(|t| SeedCurves {
                label: format!(
                    "seed {}{}",
                    t.seed,
                    if t.status == "completed" {
                        String::new()
                    } else {
                        format!(" ({})", t.status)
                    }
                ),
                loss: rows
                    .curves
                    .iter()
                    .filter(|p| p.trial == t.id && p.name == "loss")
                    .map(|p| (p.step as f64, p.value))
                    .collect(),
                success: rows
                    .evaluations
                    .iter()
                    .filter(|e| e.trial == t.id)
                    .map(|e| (e.step as f64, e.success_rate))
                    .collect(),
            })
            .collect();
        let file = format!("figures/{}-curves-{k}.png", slug(&rows.name));
        figures::learning_curves(
            &out.join(&file),
            &format!("{}: {}", rows.name, setting.setting),
            &seeds,
        )?;
        figures.push(Figure {
            title: format!("Learning curves: {}", setting.setting),
            file,
        });
    }

    // Success against a swept numeric key (the task's dimension when none is swept).
    let key = swept_numeric_key(&trials).unwrap_or_else(|| "task.n_dim".to_owned());
    let mut pooled: BTreeMap<(String, i64), (i64, i64, f64)> = BTreeMap::new();
    let specs: BTreeMap<&str, Spec> = rows
        .trials
        .iter()
        .filter_map(|t| Some((t.id.as_str(), serde_json::from_str(&t.config_json).ok()?)))
        .collect();
    for t in &trials {
        let (Some((s, n)), Some(x)) =
            (t.final_step_success, key_value(&specs[t.id.as_str()], &key))
        else {
            continue;
        };
        let label = match &t.variant {
            Some(v) => format!("{} ({v})", t.policy),
            None => t.policy.clone(),
        };
        let entry = pooled.entry((label, (x * 1e6) as i64)).or_insert((0, 0, x));
        entry.0 += s;
        entry.1 += n;
    }
    let mut series: BTreeMap<String, RateSeries> = BTreeMap::new();
    for ((label, _), (s, n, x)) in &pooled {
        let Some((rate, lo, hi)) = pooled_success(*s, *n) else {
            continue;
        };
        series
            .entry(label.clone())
            .or_insert_with(|| RateSeries {
                label: label.clone(),
                points: Vec::new(),
            })
            .points
            .push((*x, rate, lo, hi));
    }
    if !series.is_empty() {
        let ibc: Vec<(String, f64, f64)> = if key == "task.n_dim" {
            let policies: Vec<&str> = trials.iter().map(|t| t.policy.as_str()).collect();
            baselines
                .iter()
                .filter(|b| policies.contains(&b.method.as_str()))
                .filter_map(|b| Some((b.source.clone(), b.n_dim as f64, b.success_rate?)))
                .filter(|(_, x, _)| pooled.values().any(|p| (p.2 - x).abs() < 1e-9))
                .collect()
        } else {
            Vec::new()
        };
        let series: Vec<RateSeries> = series.into_values().collect();
        let file = format!("figures/{}-success-vs-{}.png", slug(&rows.name), slug(&key));
        figures::success_against(
            &out.join(&file),
            &format!("{}: success against {key}", rows.name),
            &key,
            &series,
            &ibc,
        )?;
        figures.push(Figure {
            title: format!("Success against {key}"),
            file,
        });
    }

    // Trajectories of the best trial's best checkpoint, re-simulated.
    if trajectories > 0 {
        if let Some((trial, step, _)) = settings
            .iter()
            .filter_map(|s| s.best.clone())
            .max_by(|a, b| a.2.total_cmp(&b.2))
        {
            match draw_trajectories(db, rows, &specs, &trial, step, trajectories, out) {
                Ok((figure, note)) => {
                    figures.push(figure);
                    notes.push(note);
                }
                Err(e) => {
                    warn!("trajectories of trial {trial}: {e:#}");
                    notes.push(format!(
                        "no trajectory figure: trial {trial} step {step}: {e:#}"
                    ));
                }
            }
        }
    }
    Ok(ExperimentSection {
        name: rows.name.clone(),
        settings,
        trials,
        figures,
        notes,
    })
}

fn draw_trajectories(
    db: &Path,
    rows: &ExperimentRows,
    specs: &BTreeMap<&str, Spec>,
    trial: &str,
    step: i64,
    count: usize,
    out: &Path,
) -> Result<(Figure, String)> {
    let (path, sha) = block_on(async {
        Store::open(db)
            .await?
            .checkpoint_file(&rows.name, trial, step)
            .await
    })?
    .with_context(|| format!("no checkpoint of step {step} recorded"))?;
    let spec = specs.get(trial).context("the trial's config")?;
    let (panels, successes) =
        trajectories::replay(spec, Path::new(&path), &sha, step as u64, count)?;
    let recorded = rows
        .evaluations
        .iter()
        .find(|e| e.trial == trial && e.step == step)
        .map(|e| e.successes);
    let file = format!("figures/{}-trajectories.png", slug(&rows.name));
    let title = format!(
        "{} trial {trial}, step {step}: {successes}/{} episodes succeeded",
        rows.name, spec.eval.episodes
    );
    figures::trajectory_grid(
        &out.join(&file),
        &title,
        &panels,
        spec.task.particle.goal_distance,
    )?;
    let note = match recorded {
        Some(r) if r as usize == successes => format!(
            "trajectories: the evaluation of trial {trial} at step {step} replayed from its checkpoint gives the recorded {r} successes"
        ),
        Some(r) => format!(
            "trajectories: the replay of trial {trial} at step {step} gives {successes} successes, the record says {r}"
        ),
        None => format!("trajectories: trial {trial} at step {step}, replayed"),
    };
    Ok((
        Figure {
            title: "Evaluation trajectories of the best checkpoint".into(),
            file,
        },
        note,
    ))
}

/// A swept key (other than the seed and the policy kind) whose values are all numbers.
fn swept_numeric_key(trials: &[TrialDigest]) -> Option<String> {
    let mut keys: BTreeMap<&str, bool> = BTreeMap::new();
    for t in trials {
        for (k, v) in &t.overrides {
            let numeric = keys.entry(k.as_str()).or_insert(true);
            *numeric &= v.is_number();
        }
    }
    keys.into_iter()
        .find(|(k, numeric)| *numeric && *k != "policy.kind")
        .map(|(k, _)| k.to_owned())
}

/// The value of a dotted key of a spec, when it is a number.
fn key_value(spec: &Spec, key: &str) -> Option<f64> {
    let mut node = serde_json::to_value(spec).ok()?;
    for part in key.split('.') {
        node = node.get(part)?.clone();
    }
    node.as_f64()
}
