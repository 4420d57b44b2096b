//! Batched rollouts: every live episode is stepped together, with one policy call per
//! environment step for the whole batch.

use anyhow::Result;
use rayon::prelude::*;

use crate::data::push_window;
use crate::task::{derive_seed, EpisodeOutcome, Task};

/// Something that acts on a batch of observation windows (task units in, task units out).
pub trait Actor {
    /// Observations per window.
    fn obs_seq_len(&self) -> usize;
    /// Actions `batch x action_dim` for windows `batch x seq_len x obs_dim`; any sampling
    /// draws from `seed`, so a rollout is reproducible.
    fn act(&self, windows: &[f32], batch: usize, seed: u64) -> Result<Vec<f32>>;
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
    let info = task.info();
    let (obs_dim, action_dim, seq) = (info.obs_dim, info.action_dim, actor.obs_seq_len());
    let mut episodes = task.reset(seeds);
    let batch = seeds.len();
    let mut histories: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(info.episode_steps + 1); batch];
    let mut actions_taken: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(info.episode_steps); batch];
    let mut windows = Vec::with_capacity(batch * seq * obs_dim);
    let sampling = derive_seed(sampling_seed, SAMPLING_STREAM);
    loop {
        let obs = episodes.observations();
        histories
            .par_iter_mut()
            .zip(obs.par_chunks(obs_dim))
            .for_each(|(history, row)| history.push(row.to_vec()));
        if episodes.is_done() {
            break;
        }
        let t = episodes.steps_taken();
        windows.clear();
        for history in &histories {
            push_window(&mut windows, history, t, seq);
        }
        let actions = actor.act(&windows, batch, derive_seed(sampling, t as u64))?;
        episodes.step(&actions)?;
        for (taken, action) in actions_taken.iter_mut().zip(actions.chunks(action_dim)) {
            taken.push(action.to_vec());
        }
    }
    Ok(episodes
        .outcomes()
        .into_iter()
        .zip(histories)
        .zip(actions_taken)
        .map(|((outcome, observations), actions)| EpisodeRecord {
            outcome,
            observations,
            actions,
        })
        .collect())
}
