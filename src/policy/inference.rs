//! How an energy-based policy picks its action: DFO or Langevin minimisation of the energy.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::ebm::{dfo_minimize, langevin, Bounds, DfoConfig, LangevinConfig, SequenceEbm};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceKind {
    /// Derivative-free optimisation (the seed's choice).
    Dfo,
    /// Uniform samples refined by Langevin, then the lowest energy (IBC's Langevin config).
    Langevin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    pub kind: InferenceKind,
    /// DFO samples per observation.
    pub samples: i64,
    pub iters: usize,
    pub noise_scale: f64,
    pub noise_shrink: f64,
    pub temperature: f64,
    /// Langevin inference: samples per observation and steps.
    pub langevin_samples: i64,
    pub langevin_steps: usize,
    /// Largest `observations x samples` evaluated at once (bounds memory in big rollouts).
    pub max_rows_per_chunk: i64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        let dfo = DfoConfig::default();
        Self {
            kind: InferenceKind::Dfo,
            samples: dfo.samples,
            iters: dfo.iters,
            noise_scale: dfo.noise_scale,
            noise_shrink: dfo.noise_shrink,
            temperature: dfo.temperature,
            langevin_samples: 512,
            langevin_steps: 100,
            max_rows_per_chunk: 1 << 20,
        }
    }
}

impl InferenceConfig {
    pub fn dfo(&self) -> DfoConfig {
        DfoConfig {
            samples: self.samples,
            iters: self.iters,
            noise_scale: self.noise_scale,
            noise_shrink: self.noise_shrink,
            temperature: self.temperature,
        }
    }

    fn samples_per_observation(&self) -> i64 {
        match self.kind {
            InferenceKind::Dfo => self.samples,
            InferenceKind::Langevin => self.langevin_samples,
        }
    }
}

/// Lowest-energy normalized actions `(B, A)` for normalized observation windows `(B, S, D)`.
pub fn infer_actions(
    model: &SequenceEbm,
    obs: &Tensor,
    bounds: &Bounds,
    cfg: &InferenceConfig,
) -> Tensor {
    let batch = obs.size()[0];
    let action_dim = model.config().action_dim;
    let per_chunk = (cfg.max_rows_per_chunk / cfg.samples_per_observation().max(1)).max(1);
    let context = tch::no_grad(|| model.observation_context(obs));
    let chunks: Vec<Tensor> = (0..batch)
        .step_by(per_chunk as usize)
        .map(|start| {
            let len = per_chunk.min(batch - start);
            let ctx = context.narrow(0, start, len);
            match cfg.kind {
                InferenceKind::Dfo => dfo_minimize(len, action_dim, bounds, &cfg.dfo(), |a| {
                    model.energies_with_context(&ctx, a, false)
                }),
                InferenceKind::Langevin => {
                    let langevin_cfg = LangevinConfig {
                        steps: cfg.langevin_steps,
                        ..Default::default()
                    };
                    let init = bounds.uniform(&[len, cfg.langevin_samples, action_dim]);
                    let samples = langevin(init, bounds, &langevin_cfg, |a| {
                        model.action_gradient(&ctx, a)
                    });
                    tch::no_grad(|| {
                        let best = model
                            .energies_with_context(&ctx, &samples, false)
                            .argmin(-1, false);
                        let index = best.view([len, 1, 1]).expand([len, 1, action_dim], false);
                        samples.gather(1, &index, false).squeeze_dim(1)
                    })
                }
            }
        })
        .collect();
    Tensor::cat(&chunks, 0).to_kind(Kind::Float)
}
