//! Training examples from demonstrations: IBC history windows `[obs_{t-S+1}, ..., obs_t]`
//! paired with the action `a_t`, the first observation repeated before the episode start
//! (IBC's `HistoryWrapper(tile_first_step_obs=True)`). Not the seed's `[obs_t, obs_{t+1}]`,
//! which would show the model the observation its action produces.

use super::demo_file::ParticleDemo;

/// The observation vector `[p, v, g1, g2]` of a demo at step `t`.
pub fn demo_observation(demo: &ParticleDemo, t: usize) -> Vec<f32> {
    let mut obs = Vec::with_capacity(4 * demo.n_dim());
    obs.extend_from_slice(&demo.positions[t]);
    obs.extend_from_slice(&demo.velocities[t]);
    obs.extend_from_slice(&demo.first_goal);
    obs.extend_from_slice(&demo.second_goal);
    obs
}

/// All windows of a set of demos, flattened row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    /// `len x seq_len x obs_dim`.
    pub observations: Vec<f32>,
    /// `len x action_dim`.
    pub actions: Vec<f32>,
    pub seq_len: usize,
    pub obs_dim: usize,
    pub action_dim: usize,
}

impl Windows {
    pub fn len(&self) -> usize {
        self.actions.len() / self.action_dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// One window per action of every demo. Demos must share one dimension.
    pub fn from_demos(demos: &[ParticleDemo], seq_len: usize) -> Self {
        assert!(seq_len >= 1, "a window holds at least one observation");
        let n_dim = demos.first().map_or(0, |d| d.n_dim());
        let obs_dim = 4 * n_dim;
        let total: usize = demos.iter().map(|d| d.actions.len()).sum();
        let mut windows = Self {
            observations: Vec::with_capacity(total * seq_len * obs_dim),
            actions: Vec::with_capacity(total * n_dim),
            seq_len,
            obs_dim,
            action_dim: n_dim,
        };
        for demo in demos {
            assert_eq!(demo.n_dim(), n_dim, "demos of different dimensions");
            let steps = demo.actions.len();
            let observations: Vec<Vec<f32>> =
                (0..steps).map(|t| demo_observation(demo, t)).collect();
            for t in 0..steps {
                push_window(&mut windows.observations, &observations, t, seq_len);
                windows.actions.extend_from_slice(&demo.actions[t]);
            }
        }
        windows
    }
}

/// Appends the window ending at `t` of an observation history, tiling the first observation.
pub fn push_window(out: &mut Vec<f32>, history: &[Vec<f32>], t: usize, seq_len: usize) {
    for k in 0..seq_len {
        let back = seq_len - 1 - k;
        out.extend_from_slice(&history[t.saturating_sub(back)]);
    }
}
