//! `ebmlab report`: tables, learning curves and trajectories of experiments beside IBC's
//! published numbers, made from the results database alone (so a report can be made while
//! a sweep still runs; unfinished trials are marked).

mod agreement;
mod figures;
mod lines;
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

use crate::checkpoint::ChecksumError;
use crate::spec::Spec;
use crate::store::{block_on, now, Baseline, Database, Store, TrialStatus};
use figures::SeedCurves;
use lines::rate_lines;

/// What to put in a report.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub out: PathBuf,
    /// Evaluation episodes of the best trial to draw (0: none; they are re-simulated).
    pub trajectories: usize,
}

/// The files a report wrote, and what it refused to vouch for.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
    pub figures: Vec<PathBuf>,
    /// Checkpoints refused (their bytes changed since they were written): the report says
    /// so in its notes and `ebmlab report` exits with 1.
    pub problems: Vec<String>,
}

/// Writes `report.md`, `report.html`, `report.json` and `figures/` for `experiments`.
pub fn write_report(
    db: &Database,
    experiments: &[String],
    options: &ReportOptions,
) -> Result<ReportFiles> {
    let (rows, baselines) = block_on(async {
        let store = Store::open(db).await?;
        let mut all = Vec::new();
        for name in experiments {
            let trials = store.report_trials(name).await?;
            if trials.is_empty() {
                bail!("no trials of experiment `{name}` in {db}");
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
    let mut problems = Vec::new();
    for experiment in &rows {
        let (section, refused) = experiment_section(
            db,
            experiment,
            &baselines,
            &options.out,
            options.trajectories,
        )?;
        written.extend(section.figures.iter().map(|f| options.out.join(&f.file)));
        problems.extend(refused);
        sections.push(section);
    }
    let report = Report {
        title: format!("ebmlab report: {}", experiments.join(", ")),
        generated: now(),
        database: db.to_string(),
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
        problems,
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

/// The key success is drawn against when no numeric key is swept: the task's dimension.
const DIMENSION_KEY: &str = "task.n_dim";

fn experiment_section(
    db: &Database,
    rows: &ExperimentRows,
    baselines: &[Baseline],
    out: &Path,
    trajectories: usize,
) -> Result<(ExperimentSection, Vec<String>)> {
    let trials = digest_trials(rows)?;
    let settings = setting_rows(&rows.name, &trials, baselines);
    let specs: BTreeMap<&str, Spec> = rows
        .trials
        .iter()
        .map(|t| {
            let spec = serde_json::from_str(&t.config_json)
                .with_context(|| format!("trial {}: its recorded config", t.id))?;
            Ok((t.id.as_str(), spec))
        })
        .collect::<Result<_>>()?;
    let mut notes = unfinished_notes(&trials);
    let mut problems = Vec::new();
    let mut figures = learning_curves(rows, &trials, &settings, out)?;
    figures.extend(success_figure(rows, &trials, &specs, baselines, out)?);
    let best = settings
        .iter()
        .filter_map(|s| s.best.clone())
        .max_by(|a, b| a.2.total_cmp(&b.2));
    if let (true, Some((trial, step, _))) = (trajectories > 0, best) {
        match draw_trajectories(db, rows, &specs, &trial, step, trajectories, out) {
            Ok((figure, note)) => {
                figures.push(figure);
                notes.push(note);
            }
            Err(e) => {
                let problem = format!("no trajectory figure: trial {trial} step {step}: {e:#}");
                warn!("{problem}");
                // An altered checkpoint is refused loudly: the report says so and the
                // command fails; a missing one is only noted.
                if e.downcast_ref::<ChecksumError>().is_some() {
                    problems.push(problem.clone());
                }
                notes.push(problem);
            }
        }
    }
    let section = ExperimentSection {
        name: rows.name.clone(),
        beside_ibc: agreement::method_sentences(&trials, baselines),
        settings,
        trials,
        figures,
        notes,
    };
    Ok((section, problems))
}

/// A note per setting with trials that are not completed (they are left out of the
/// success column): the setting once, then each such trial, its state and why.
fn unfinished_notes(trials: &[TrialDigest]) -> Vec<String> {
    let mut order: Vec<&str> = Vec::new();
    let mut by_setting: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for t in trials.iter().filter(|t| t.status != TrialStatus::Completed) {
        let why = t
            .error
            .as_deref()
            .and_then(|e| e.lines().next())
            .map_or(String::new(), |why| format!(" ({why})"));
        let entry = format!(
            "trial {} is {} at step {}/{}{why}",
            t.id,
            t.status.to_string().to_uppercase(),
            t.step,
            t.iterations,
        );
        if !by_setting.contains_key(t.setting.as_str()) {
            order.push(&t.setting);
        }
        by_setting.entry(&t.setting).or_default().push(entry);
    }
    order
        .into_iter()
        .map(|setting| {
            format!(
                "{setting}: not in the success column: {}",
                by_setting[setting].join("; ")
            )
        })
        .collect()
}

/// Learning curves, one figure per setting: loss and success against step per seed.
fn learning_curves(
    rows: &ExperimentRows,
    trials: &[TrialDigest],
    settings: &[SettingRow],
    out: &Path,
) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for (k, setting) in settings.iter().enumerate() {
        let seeds: Vec<SeedCurves> = trials
            .iter()
            .filter(|t| t.setting == setting.setting)
            .map(|t| SeedCurves {
                label: if t.status == TrialStatus::Completed {
                    format!("seed {}", t.seed)
                } else {
                    format!("seed {} ({})", t.seed, t.status)
                },
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
    Ok(figures)
}

/// Success against the task's dimension when trials differ in it (else a swept numeric
/// key), one line per setting apart from that key, pooled over seeds and named by its
/// method, with the published number of the same method at each dimension as a star in
/// the line's colour; none where no line has two values of that key.
fn success_figure(
    rows: &ExperimentRows,
    trials: &[TrialDigest],
    specs: &BTreeMap<&str, Spec>,
    baselines: &[Baseline],
    out: &Path,
) -> Result<Option<Figure>> {
    let dims_vary = trials.iter().any(|t| t.n_dim != trials[0].n_dim);
    let key = if dims_vary {
        DIMENSION_KEY.to_owned()
    } else {
        swept_numeric_key(trials).unwrap_or_else(|| DIMENSION_KEY.to_owned())
    };
    let x_of = |t: &TrialDigest| {
        if key == DIMENSION_KEY {
            Some(t.n_dim as f64)
        } else {
            key_value(&specs[t.id.as_str()], &key)
        }
    };
    let series = rate_lines(trials, &key, x_of, baselines, key == DIMENSION_KEY);
    if series.is_empty() {
        return Ok(None);
    }
    let file = format!("figures/{}-success-vs-{}.png", slug(&rows.name), slug(&key));
    let label = if key == DIMENSION_KEY {
        "N (action dimensions)"
    } else {
        &key
    };
    figures::success_against(
        &out.join(&file),
        &format!("{}: success against {label}", rows.name),
        label,
        key == DIMENSION_KEY,
        &series,
    )?;
    Ok(Some(Figure {
        title: format!("Success against {label}"),
        file,
    }))
}

fn draw_trajectories(
    db: &Database,
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
    let replay = trajectories::replay(spec, Path::new(&path), &sha, count)?;
    let recorded = rows
        .evaluations
        .iter()
        .find(|e| e.trial == trial && e.step == step)
        .map(|e| e.successes);
    let file = format!("figures/{}-trajectories.png", slug(&rows.name));
    let title = format!(
        "{} trial {trial}, step {step}: {}/{} episodes succeeded",
        rows.name, replay.successes, spec.eval.episodes
    );
    figures::trajectory_grid(&out.join(&file), &title, &replay.panels, replay.goal_radius)?;
    let successes = replay.successes;
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
