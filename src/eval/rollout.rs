//! Batched rollouts: every live episode is stepped together, with one policy call per
//! environment step for the whole batch; several policies' episodes (a pack's members)
//! step in lockstep with one call for all of them.

use anyhow::{ensure, Result};
use rayon::prelude::*;

use crate::data::push_window;
use crate::task::{derive_seed, EpisodeOutcome, Episodes, Task};

/// Something that acts on a batch of observation windows (task units in, task units out).
pub trait Actor {
    /// Observations per window.
    fn obs_seq_len(&self) -> usize;
    /// Actions `batch x action_dim` for windows `batch x seq_len x obs_dim`; any sampling
    /// draws from `seed`, so a rollout is reproducible.
    fn act(&self, windows: &[f32], batch: usize, seed: u64) -> Result<Vec<f32>>;
}

/// Several policies acting in one call: member k's actions are those its own [`Actor`]
/// gives for its windows and seed.
pub trait PackActor {
    fn obs_seq_len(&self) -> usize;
    /// Per member: windows `batch_k x seq_len x obs_dim`, and its seed; returns per member
    /// actions `batch_k x action_dim`.
    fn act_all(&self, windows: &[&[f32]], seeds: &[u64]) -> Result<Vec<Vec<f32>>>;
}

/// One evaluated episode.
#[derive(Debug, Clone)]
pub struct EpisodeRecord {
    pub outcome: EpisodeOutcome,
    /// Observations before each step, then the final one (`steps + 1` rows).
    pub observations: Vec<Vec<f32>>,
    pub actions: Vec<Vec<f32>>,
}

/// Stream of the actor's sampling seeds, apart from the episode seeds drawn from the same base.
const SAMPLING_STREAM: u64 = u64::MAX;

/// Runs one episode per seed to the end with `actor`; the actor's sampling at step `t`
/// draws from a seed derived from `(sampling_seed, t)`.
pub fn rollout(
    task: &dyn Task,
    actor: &dyn Actor,
    seeds: &[u64],
    sampling_seed: u64,
) -> Result<Vec<EpisodeRecord>> {
    let mut run = Rollout::start(task, actor.obs_seq_len(), seeds, sampling_seed);
    while let Some(t) = run.observe() {
        let actions = actor.act(&run.windows, seeds.len(), run.seed_at(t))?;
        run.step(&actions)?;
    }
    Ok(run.finish())
}

/// [`rollout`] of several policies together: member k runs `seeds[k]` on `tasks[k]` with
/// its `sampling_seeds[k]`, and gets the episodes it gets alone.
pub fn rollout_pack(
    tasks: &[&dyn Task],
    actor: &dyn PackActor,
    seeds: &[Vec<u64>],
    sampling_seeds: &[u64],
) -> Result<Vec<Vec<EpisodeRecord>>> {
    ensure!(
        tasks.len() == seeds.len() && seeds.len() == sampling_seeds.len(),
        "one task, episode list and sampling seed per member"
    );
    let mut runs: Vec<Rollout> = tasks
        .iter()
        .zip(seeds)
        .zip(sampling_seeds)
        .map(|((task, seeds), &s)| Rollout::start(*task, actor.obs_seq_len(), seeds, s))
        .collect();
    loop {
        let steps: Vec<Option<usize>> = runs.iter_mut().map(Rollout::observe).collect();
        if steps.iter().all(Option::is_none) {
            break;
        }
        ensure!(
            steps.iter().all(|s| *s == steps[0]),
            "the members' episodes have different lengths: they cannot act together"
        );
        let t = steps[0].expect("checked above");
        let windows: Vec<&[f32]> = runs.iter().map(|r| r.windows.as_slice()).collect();
        let seeds: Vec<u64> = runs.iter().map(|r| r.seed_at(t)).collect();
        let actions = actor.act_all(&windows, &seeds)?;
        for (run, actions) in runs.iter_mut().zip(&actions) {
            run.step(actions)?;
        }
    }
    Ok(runs.into_iter().map(Rollout::finish).collect())
}

/// The episodes of one policy in flight: their histories, actions, and the windows of
/// the current step.
struct Rollout {
    episodes: Box<dyn Episodes>,
    obs_dim: usize,
    action_dim: usize,
    seq: usize,
    histories: Vec<Vec<Vec<f32>>>,
    actions_taken: Vec<Vec<Vec<f32>>>,
    windows: Vec<f32>,
    sampling: u64,
}

impl Rollout {
    fn start(task: &dyn Task, seq: usize, seeds: &[u64], sampling_seed: u64) -> Self {
        let info = task.info();
        let batch = seeds.len();
        Self {
            episodes: task.reset(seeds),
            obs_dim: info.obs_dim,
            action_dim: info.action_dim,
            seq,
            histories: vec![Vec::with_capacity(info.episode_steps + 1); batch],
            actions_taken: vec![Vec::with_capacity(info.episode_steps); batch],
            windows: Vec::with_capacity(batch * seq * info.obs_dim),
            sampling: derive_seed(sampling_seed, SAMPLING_STREAM),
        }
    }

    /// Records the current observations; while the episodes go on, fills the windows
    /// to act on and gives the step.
    fn observe(&mut self) -> Option<usize> {
        let obs = self.episodes.observations();
        self.histories
            .par_iter_mut()
            .zip(obs.par_chunks(self.obs_dim))
            .for_each(|(history, row)| history.push(row.to_vec()));
        if self.episodes.is_done() {
            return None;
        }
        let t = self.episodes.steps_taken();
        self.windows.clear();
        for history in &self.histories {
            push_window(&mut self.windows, history, t, self.seq);
        }
        Some(t)
    }

    /// The actor's sampling seed at step `t`.
    fn seed_at(&self, t: usize) -> u64 {
        derive_seed(self.sampling, t as u64)
    }

    fn step(&mut self, actions: &[f32]) -> Result<()> {
        self.episodes.step(actions)?;
        for (taken, action) in self
            .actions_taken
            .iter_mut()
            .zip(actions.chunks(self.action_dim))
        {
            taken.push(action.to_vec());
        }
        Ok(())
    }

    fn finish(self) -> Vec<EpisodeRecord> {
        self.episodes
            .outcomes()
            .into_iter()
            .zip(self.histories)
            .zip(self.actions_taken)
            .map(|((outcome, observations), actions)| EpisodeRecord {
                outcome,
                observations,
                actions,
            })
            .collect()
    }
}
