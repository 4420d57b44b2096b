//! Training examples from demonstrations: IBC history windows `[obs_{t-S+1}, ..., obs_t]`
//! paired with the action `a_t`, the first observation repeated before the episode start
//! (IBC's `HistoryWrapper(tile_first_step_obs=True)`). Not the seed's `[obs_t, obs_{t+1}]`,
//! which would show the model the observation its action produces.

use crate::task::Demo;

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

    /// One window per action of every demo. Demos must share their shapes.
    pub fn from_demos(demos: &[Demo], seq_len: usize) -> Self {
        assert!(seq_len >= 1, "a window holds at least one observation");
        let obs_dim = demos
            .first()
            .and_then(|d| d.observations.first())
            .map_or(0, Vec::len);
        let action_dim = demos
            .first()
            .and_then(|d| d.actions.first())
            .map_or(0, Vec::len);
        let total: usize = demos.iter().map(|d| d.actions.len()).sum();
        let mut windows = Self {
            observations: Vec::with_capacity(total * seq_len * obs_dim),
            actions: Vec::with_capacity(total * action_dim),
            seq_len,
            obs_dim,
            action_dim,
        };
        for demo in demos {
            for t in 0..demo.actions.len() {
                push_window(&mut windows.observations, &demo.observations, t, seq_len);
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
