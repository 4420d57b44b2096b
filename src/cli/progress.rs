//! A run's events in the terminal: a line per job started and ended, and a progress bar
//! per running job (hidden with `--quiet` or when stderr is not a terminal).

use std::collections::HashMap;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::sched::{JobKind, JobOutcome, Reporter, RunEvent, StopReason};

pub struct ConsoleReporter {
    experiment: String,
    bars: MultiProgress,
    running: HashMap<usize, ProgressBar>,
}

impl ConsoleReporter {
    pub fn new(experiment: &str, show_bars: bool) -> Self {
        let bars = MultiProgress::new();
        if !show_bars {
            bars.set_draw_target(ProgressDrawTarget::hidden());
        }
        Self {
            experiment: experiment.to_owned(),
            bars,
            running: HashMap::new(),
        }
    }

    /// A line on stdout, above the progress bars when they are shown.
    fn say(&self, line: String) {
        if self.bars.is_hidden() {
            println!("{line}");
        } else {
            let _ = self.bars.println(line);
        }
    }

    fn bar(&mut self, key: usize, prefix: String, message: String, steps: Option<u64>) {
        let bar = match steps {
            Some(steps) => {
                let bar = ProgressBar::new(steps);
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:24}] {pos}/{len} {msg}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar
            }
            None => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{prefix} {spinner} {msg}")
                        .expect("valid template"),
                );
                bar
            }
        };
        bar.set_prefix(prefix);
        bar.set_message(message);
        self.running.insert(key, self.bars.add(bar));
    }
}

impl Reporter for ConsoleReporter {
    fn report(&mut self, event: RunEvent) {
        match event {
            RunEvent::MarkedKilled { trial, reason } => {
                self.say(format!("trial {trial}: marked killed: {reason}"))
            }
            RunEvent::LeftToOtherRun { trial } => {
                self.say(format!("trial {trial}: running in another process; left to it"))
            }
            RunEvent::Following {
                backend_job,
                trials,
            } => self.say(format!(
                "job {backend_job} still runs {}: following it",
                trials.join(" ")
            )),
            RunEvent::NothingToRun => self.say(format!("{}: nothing to run", self.experiment)),
            RunEvent::Started {
                jobs,
                slots,
                backend,
            } => self.say(format!(
                "{}: {jobs} jobs on {} slots ({}), backend {backend}",
                self.experiment,
                slots.len(),
                slots.join(" ")
            )),
            RunEvent::JobStarted {
                key,
                job,
                slot,
                worker,
                settings,
                steps,
            } => {
                let message = match job.kind {
                    JobKind::Train => settings.clone(),
                    JobKind::Evaluate { step } => format!("evaluating step {step}"),
                };
                self.bar(key, format!("{slot} {}", job.lead()), message, steps);
                self.say(format!(
                    "start  {}  on {slot} ({worker})  {settings}",
                    job.describe()
                ));
            }
            RunEvent::Progress { key, step, loss } => {
                if let Some(bar) = self.running.get(&key) {
                    bar.set_position(step);
                    if let Some(loss) = loss {
                        bar.set_message(format!("loss {loss:.4}"));
                    }
                }
            }
            RunEvent::JobEnded {
                key,
                job,
                outcome,
                settings,
                success_rate,
            } => {
                if let Some(bar) = self.running.remove(&key) {
                    bar.finish_and_clear();
                    self.bars.remove(&bar);
                }
                let job = job.describe();
                self.say(match outcome {
                    JobOutcome::Succeeded => match success_rate {
                        Some(s) => format!("done   {job}  success {:.1}%  {settings}", 100.0 * s),
                        None => format!("done   {job}  {settings}"),
                    },
                    JobOutcome::Cancelled => format!("stopped {job}: checkpoint saved"),
                    JobOutcome::Retrying {
                        reason,
                        attempt,
                        retries,
                    } => format!("{job} failed ({reason}); retry {attempt} of {retries}"),
                    JobOutcome::Failed { reason } => format!("{job} failed: {reason}"),
                });
            }
            RunEvent::Stopping { reason } => self.say(match reason {
                StopReason::FailFast { job } => format!(
                    "--fail-fast: {job} failed; stopping the other workers (they save a checkpoint)"
                ),
                StopReason::Signal { name } => format!(
                    "{name}: stopping: workers save a checkpoint and stop (signal again to kill them)"
                ),
                StopReason::Kill { name } => format!("{name} again: killing the workers"),
            }),
        }
    }
}
