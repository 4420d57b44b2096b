//! Counter-examples for InfoNCE: uniform draws in the sampling bounds, a share of them
//! refined on the current energy by Langevin or by IBC's iterative DFO.
//!
//! Every random number of a batch's counter-examples is drawn before any is refined
//! ([`CounterExampleDraws`]), in a fixed order, so a pack's member uses exactly the draws
//! of its solo trial whatever else runs with it.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::dfo::resample;
use super::langevin::{langevin_with_noise, Bounds, LangevinConfig};
use super::SequenceEbm;

/// How counter-examples are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativeKind {
    /// Uniform in the sampling bounds (IBC's DFO-trained variant).
    Uniform,
    /// Uniform, then refined by Langevin on the current energy (IBC's Langevin variant).
    Langevin,
    /// Uniform, then refined by IBC's iterative DFO on the current energy: resampled by
    /// `softmax(-E)` with shrinking noise (IBC's `fraction_dfo_samples`). They land on the
    /// model's own modes, wrong ones included, which uniform draws rarely hit.
    Dfo,
}

/// Counter-examples per positive and how they are made (spec table `train.negatives`;
/// the Langevin parameters sit beside `kind` and `count`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NegativesConfig {
    pub kind: NegativeKind,
    pub count: i64,
    /// Share of the counter-examples that are refined (Langevin or DFO); the rest stay
    /// uniform (IBC's `fraction_langevin_samples` / `fraction_dfo_samples`).
    // Keys added after trial ids were first made stay out of the resolved spec (and so of
    // the id) while at their defaults.
    #[serde(skip_serializing_if = "is_one")]
    pub refined_fraction: f64,
    /// DFO counter-examples: rounds of resampling, and the noise std after the first
    /// (halved every round), in normalized action units.
    #[serde(skip_serializing_if = "is_default_dfo_iters")]
    pub dfo_iters: usize,
    #[serde(skip_serializing_if = "is_default_dfo_noise")]
    pub dfo_noise_scale: f64,
    #[serde(flatten)]
    pub langevin: LangevinConfig,
}

const DFO_ITERS: usize = 3;
const DFO_NOISE_SCALE: f64 = 0.33;

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

fn is_default_dfo_iters(x: &usize) -> bool {
    *x == DFO_ITERS
}

fn is_default_dfo_noise(x: &f64) -> bool {
    *x == DFO_NOISE_SCALE
}

impl NegativesConfig {
    /// How many of the `count` counter-examples are refined; the uniform ones come first
    /// (IBC's order; rounding goes to the uniform ones).
    pub fn refined_count(&self) -> i64 {
        match self.kind {
            NegativeKind::Uniform => 0,
            NegativeKind::Langevin | NegativeKind::Dfo => {
                (self.refined_fraction * self.count as f64).floor() as i64
            }
        }
    }
}

impl Default for NegativesConfig {
    fn default() -> Self {
        Self {
            kind: NegativeKind::Langevin,
            count: 8,
            refined_fraction: 1.0,
            dfo_iters: DFO_ITERS,
            dfo_noise_scale: DFO_NOISE_SCALE,
            langevin: LangevinConfig::default(),
        }
    }
}

/// The random draws of one batch's counter-examples (solo shapes; a pack stacks its
/// members' draws in a leading dimension).
#[derive(Debug)]
pub struct CounterExampleDraws {
    /// Uniform starts `(B, count, A)`; the last `refined_count` are refined.
    pub init: Tensor,
    pub refinement: RefinementDraws,
}

#[derive(Debug)]
pub enum RefinementDraws {
    None,
    /// The noise of every Langevin step, `(steps, B, R, A)`.
    Langevin {
        noise: Tensor,
    },
    /// Per DFO round, the uniforms that pick the resampled rows `(iters, B, count)`, and
    /// the noise added before every round but the first `(iters - 1, B, count, A)`.
    Dfo {
        uniforms: Tensor,
        noise: Tensor,
    },
}

impl CounterExampleDraws {
    /// Draws in this order: uniform starts, then the refinement's numbers.
    pub fn draw(batch: i64, action_dim: i64, bounds: &Bounds, cfg: &NegativesConfig) -> Self {
        let init = bounds.uniform(&[batch, cfg.count, action_dim]);
        let options = (Kind::Float, init.device());
        let refined = cfg.refined_count();
        let refinement = match cfg.kind {
            _ if refined == 0 => RefinementDraws::None,
            NegativeKind::Uniform => RefinementDraws::None,
            NegativeKind::Langevin => RefinementDraws::Langevin {
                noise: Tensor::randn(
                    [cfg.langevin.steps as i64, batch, refined, action_dim],
                    options,
                ),
            },
            NegativeKind::Dfo => {
                let iters = cfg.dfo_iters as i64;
                RefinementDraws::Dfo {
                    uniforms: Tensor::rand([iters, batch, cfg.count], options),
                    noise: Tensor::randn([iters - 1, batch, cfg.count, action_dim], options),
                }
            }
        };
        Self { init, refinement }
    }

    /// The members' draws stacked in a new leading dimension (all of one kind and shape).
    pub fn stack(members: Vec<Self>) -> Self {
        let init = Tensor::stack(&members.iter().map(|d| &d.init).collect::<Vec<_>>(), 0);
        let stacked = |f: &dyn Fn(&RefinementDraws) -> Option<&Tensor>| {
            let parts: Vec<&Tensor> = members
                .iter()
                .map(|d| f(&d.refinement).expect("pack members draw alike"))
                .collect();
            Tensor::stack(&parts, 0)
        };
        let refinement = match &members[0].refinement {
            RefinementDraws::None => RefinementDraws::None,
            RefinementDraws::Langevin { .. } => RefinementDraws::Langevin {
                noise: stacked(&|r| match r {
                    RefinementDraws::Langevin { noise } => Some(noise),
                    _ => None,
                }),
            },
            RefinementDraws::Dfo { .. } => RefinementDraws::Dfo {
                uniforms: stacked(&|r| match r {
                    RefinementDraws::Dfo { uniforms, .. } => Some(uniforms),
                    _ => None,
                }),
                noise: stacked(&|r| match r {
                    RefinementDraws::Dfo { noise, .. } => Some(noise),
                    _ => None,
                }),
            },
        };
        Self { init, refinement }
    }
}

/// Counter-examples `(B, count, A)` for a batch of observation windows `obs` `(B, S, D)`
/// whose observation context is `context` `(B, hidden)` (Langevin reads the windows, DFO
/// the context).
pub fn counter_examples(
    model: &SequenceEbm,
    obs: &Tensor,
    context: &Tensor,
    bounds: &Bounds,
    cfg: &NegativesConfig,
    temperature: f64,
) -> Tensor {
    let batch = obs.size()[0];
    let draws = CounterExampleDraws::draw(batch, model.config().action_dim, bounds, cfg);
    let obs = obs.detach();
    let context = context.detach();
    refine(draws, cfg, |start, refinement| match refinement {
        RefinementDraws::None => unreachable!("refine calls back only with draws"),
        RefinementDraws::Langevin { noise } => langevin_with_noise(
            start,
            bounds,
            &cfg.langevin,
            noise,
            model.action_gradient_fn(&obs),
        ),
        RefinementDraws::Dfo { uniforms, noise } => dfo_refine(
            start,
            bounds,
            cfg.dfo_iters,
            cfg.dfo_noise_scale,
            |i| {
                let noise = (i > 0).then(|| noise.get(i as i64 - 1));
                (uniforms.get(i as i64), noise)
            },
            |a| model.energies_with_context(&context, a, false) / -temperature,
        ),
    })
}

/// The counter-examples of `draws` (solo `(B, N, A)` or packed `(K, B, N, A)`): the first
/// `count - refined_count` uniform as drawn, the last `refined_count` refined by
/// `refine_with`. DFO resamples from all the uniform draws (IBC seeds it with every one)
/// and its last rows are kept; Langevin moves only the last draws (its chains are
/// independent, so the others' would be thrown away).
pub fn refine(
    draws: CounterExampleDraws,
    cfg: &NegativesConfig,
    refine_with: impl FnOnce(Tensor, &RefinementDraws) -> Tensor,
) -> Tensor {
    let CounterExampleDraws { init, refinement } = draws;
    let refined = cfg.refined_count();
    let uniform = cfg.count - refined;
    let start = match refinement {
        RefinementDraws::None => return init,
        RefinementDraws::Dfo { .. } => init.shallow_clone(),
        RefinementDraws::Langevin { .. } => init.narrow(-2, uniform, refined),
    };
    let moved = refine_with(start, &refinement);
    let rows = moved.size()[moved.dim() - 2];
    let moved = moved.narrow(-2, rows - refined, refined);
    if uniform == 0 {
        moved
    } else {
        Tensor::cat(&[init.narrow(-2, 0, uniform), moved], -2)
    }
}

/// IBC's iterative DFO on counter-examples `samples` `(.., R, A)`: `iters` rounds of
/// resampling rows by `softmax(logits)` (`logits` maps samples to `(.., R)`, i.e. `-E/T`),
/// with Gaussian noise of std `noise_scale` (halved every round) added and clipped before
/// every round but the first. `draws(i)` gives round i's uniforms `(.., R)` (inverse-CDF
/// picks, so the draws are made beforehand) and, for `i >= 1`, its noise `(.., R, A)`.
pub fn dfo_refine(
    samples: Tensor,
    bounds: &Bounds,
    iters: usize,
    noise_scale: f64,
    draws: impl Fn(usize) -> (Tensor, Option<Tensor>),
    logits: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    tch::no_grad(|| {
        let rows = samples.size()[samples.dim() - 2];
        let mut samples = samples;
        let mut std = noise_scale;
        for i in 0..iters {
            let (uniforms, noise) = draws(i);
            if let Some(noise) = noise {
                samples = bounds.clip(&(&samples + noise * std));
                std *= 0.5;
            }
            let probs = logits(&samples).softmax(-1, Kind::Float);
            samples = resample(&samples, &probs, &uniforms, rows);
        }
        samples
    })
}
