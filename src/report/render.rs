//! The report as Markdown and as one self-contained HTML page (figures embedded).

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;

use super::model::{SettingRow, TrialDigest};
use crate::store::Baseline;

/// A report's content, ready to render.
#[derive(Debug, Clone)]
pub struct Report {
    pub title: String,
    pub generated: String,
    pub database: String,
    /// The table across experiments (only when there are several).
    pub comparison: Vec<SettingRow>,
    pub experiments: Vec<ExperimentSection>,
    pub baselines: Vec<Baseline>,
}

#[derive(Debug, Clone)]
pub struct ExperimentSection {
    pub name: String,
    pub settings: Vec<SettingRow>,
    pub trials: Vec<TrialDigest>,
    pub figures: Vec<Figure>,
    /// A sentence per method: where it agrees with IBC and where not.
    pub beside_ibc: Vec<String>,
    pub notes: Vec<String>,
}

/// A figure file, relative to the report's folder.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub file: String,
}

fn percent(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.1}%", 100.0 * x))
}

const HEADER: [&str; 12] = [
    "setting",
    "policy",
    "N",
    "trials",
    "seeds",
    "success [95% CI]",
    "best checkpoint",
    "final step",
    "train time",
    "it/s",
    "IBC",
    "difference",
];

fn setting_cells(r: &SettingRow, with_experiment: bool) -> Vec<String> {
    let success = match (r.success_rate, r.ci_low, r.ci_high) {
        (Some(s), Some(l), Some(h)) => format!(
            "{} [{:.1}, {:.1}] of {} episodes",
            percent(Some(s)),
            100.0 * l,
            100.0 * h,
            r.episodes
        ),
        _ => "-".into(),
    };
    let trials = if r.completed == r.trials {
        r.trials.to_string()
    } else {
        format!("{} ({} unfinished)", r.trials, r.trials - r.completed)
    };
    let ibc = r.ibc.as_ref().map_or("-".into(), |b| {
        // A rate read from a plot carries its reading error: "100.0% ±5".
        let error = b
            .reading_error
            .map_or(String::new(), |e| format!(" ±{:.0}", 100.0 * e));
        format!(
            "{}{error} ({}{}{})",
            percent(Some(b.success_rate)),
            b.source,
            b.variant
                .as_ref()
                .map_or(String::new(), |v| format!(", {v}")),
            b.steps
                .map_or(String::new(), |s| format!(", {}k steps", s / 1000))
        )
    });
    let setting = if with_experiment {
        format!("{}: {}", r.experiment, r.setting)
    } else {
        r.setting.clone()
    };
    vec![
        setting,
        match &r.variant {
            Some(v) => format!("{} ({v})", r.policy),
            None => r.policy.clone(),
        },
        r.n_dim.to_string(),
        trials,
        r.seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        success,
        r.best.as_ref().map_or("-".into(), |(t, s, rate)| {
            format!("{t} @ {s}: {}", percent(Some(*rate)))
        }),
        r.final_step.to_string(),
        r.train_seconds.map_or("-".into(), |s| format!("{s:.0} s")),
        r.iterations_per_second
            .map_or("-".into(), |s| format!("{s:.1}")),
        ibc,
        r.difference_pp
            .map_or("-".into(), |d| format!("{d:+.1} pp")),
    ]
}

fn trial_cells(t: &TrialDigest) -> Vec<String> {
    vec![
        t.id.clone(),
        t.setting.clone(),
        t.seed.to_string(),
        if t.status == crate::store::TrialStatus::Completed {
            t.status.to_string()
        } else {
            format!("**{}**", t.status)
        },
        format!("{}/{}", t.step, t.iterations),
        t.final_step_success
            .map_or("-".into(), |(s, n)| format!("{s}/{n}")),
        t.error
            .clone()
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    ]
}

const TRIAL_HEADER: [&str; 7] = [
    "trial",
    "setting",
    "seed",
    "status",
    "progress",
    "final successes",
    "error",
];

fn md_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let escape = |s: &str| s.replace('|', "\\|");
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(header.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| escape(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
}

fn baseline_rows(baselines: &[Baseline]) -> Vec<Vec<String>> {
    baselines
        .iter()
        .map(|b| {
            vec![
                b.source.clone(),
                b.n_dim.to_string(),
                b.method.clone(),
                b.variant.clone().unwrap_or_default(),
                b.steps.map_or("-".into(), |s| s.to_string()),
                b.episodes.map_or("-".into(), |s| s.to_string()),
                percent(b.success_rate),
                b.note.clone(),
            ]
        })
        .collect()
}

const BASELINE_HEADER: [&str; 8] = [
    "source", "N", "method", "variant", "steps", "episodes", "success", "note",
];

pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", report.title);
    let _ = writeln!(
        out,
        "Generated {} from `{}`. Success is pooled over the final evaluations' episodes of the \
         completed trials of a setting, with its Wilson 95% interval; the IBC column is the \
         published number of the same method, trained and acting alike (`baselines` table; \
         ±5: read by eye from a plot), and the difference is in percentage points.\n",
        report.generated, report.database
    );
    if !report.comparison.is_empty() {
        let _ = writeln!(out, "## All experiments\n");
        let rows: Vec<_> = report
            .comparison
            .iter()
            .map(|r| setting_cells(r, true))
            .collect();
        md_table(&mut out, &HEADER, &rows);
    }
    for e in &report.experiments {
        let _ = writeln!(out, "## {}\n", e.name);
        let rows: Vec<_> = e.settings.iter().map(|r| setting_cells(r, false)).collect();
        md_table(&mut out, &HEADER, &rows);
        if !e.beside_ibc.is_empty() {
            let _ = writeln!(out, "### Beside IBC\n");
            for sentence in &e.beside_ibc {
                let _ = writeln!(out, "- {sentence}");
            }
            out.push('\n');
        }
        for note in &e.notes {
            let _ = writeln!(out, "- {note}");
        }
        if !e.notes.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(out, "### Trials\n");
        let rows: Vec<_> = e.trials.iter().map(trial_cells).collect();
        md_table(&mut out, &TRIAL_HEADER, &rows);
        for f in &e.figures {
            let _ = writeln!(out, "### {}\n\n![{}]({})\n", f.title, f.title, f.file);
        }
    }
    let _ = writeln!(out, "## Published baselines\n");
    md_table(
        &mut out,
        &BASELINE_HEADER,
        &baseline_rows(&report.baselines),
    );
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", html_escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let (text, class) = match cell.strip_prefix("**").and_then(|c| c.strip_suffix("**")) {
                Some(inner) => (inner, " class=\"unfinished\""),
                None => (cell.as_str(), ""),
            };
            let _ = write!(out, "<td{class}>{}</td>", html_escape(text));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>\n");
}

/// The HTML page; figures are read from `dir` and embedded as data URIs.
pub fn html(report: &Report, dir: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222}}\
         table{{border-collapse:collapse;margin:8px 0 20px;font-size:13px}}\
         th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         th{{background:#f0f0f0}} td.unfinished{{color:#b00;font-weight:bold}}\
         img{{max-width:100%;border:1px solid #ddd;margin:6px 0 18px}}\
         </style></head><body>",
        html_escape(&report.title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", html_escape(&report.title));
    let _ = writeln!(
        out,
        "<p>Generated {} from <code>{}</code>. Success is pooled over the final evaluations' \
         episodes of the completed trials of a setting, with its Wilson 95% interval; the IBC \
         column is the published number of the same method, trained and acting alike (±5: \
         read by eye from a plot), and the difference is in percentage points.</p>",
        html_escape(&report.generated),
        html_escape(&report.database)
    );
    if !report.comparison.is_empty() {
        out.push_str("<h2>All experiments</h2>");
        let rows: Vec<_> = report
            .comparison
            .iter()
            .map(|r| setting_cells(r, true))
            .collect();
        html_table(&mut out, &HEADER, &rows);
    }
    for e in &report.experiments {
        let _ = writeln!(out, "<h2>{}</h2>", html_escape(&e.name));
        let rows: Vec<_> = e.settings.iter().map(|r| setting_cells(r, false)).collect();
        html_table(&mut out, &HEADER, &rows);
        if !e.beside_ibc.is_empty() {
            out.push_str("<h3>Beside IBC</h3><ul>");
            for sentence in &e.beside_ibc {
                let _ = write!(out, "<li>{}</li>", html_escape(sentence));
            }
            out.push_str("</ul>");
        }
        if !e.notes.is_empty() {
            out.push_str("<ul>");
            for note in &e.notes {
                let _ = write!(out, "<li>{}</li>", html_escape(note));
            }
            out.push_str("</ul>");
        }
        out.push_str("<h3>Trials</h3>");
        let rows: Vec<_> = e.trials.iter().map(trial_cells).collect();
        html_table(&mut out, &TRIAL_HEADER, &rows);
        for f in &e.figures {
            let _ = write!(out, "<h3>{}</h3>", html_escape(&f.title));
            match std::fs::read(dir.join(&f.file)) {
                Ok(bytes) => {
                    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
                    let _ = writeln!(
                        out,
                        "<img alt=\"{}\" src=\"data:image/png;base64,{data}\">",
                        html_escape(&f.title)
                    );
                }
                Err(_) => {
                    let _ = writeln!(out, "<p>(missing figure {})</p>", html_escape(&f.file));
                }
            }
        }
    }
    out.push_str("<h2>Published baselines</h2>");
    html_table(
        &mut out,
        &BASELINE_HEADER,
        &baseline_rows(&report.baselines),
    );
    out.push_str("</body></html>\n");
    out
}
