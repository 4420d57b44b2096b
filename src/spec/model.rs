//! The experiment spec: what one trial trains and evaluates. Every key has a default (IBC's
//! particle settings), so a spec file names only what it changes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::pack::PackSize;
use crate::policy::ebm::{EbmLossConfig, GradPenaltyConfig, NegativesConfig};
use crate::policy::{InferenceConfig, InferenceKind, NetConfig, PolicySpec, Precision};
use crate::task::TaskConfig;
use crate::train::LrSchedule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Experiment name: runs go to `runs/<name>/<trial>/`.
    pub name: String,
    /// A spec file this one builds on (path relative to this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    #[serde(default)]
    pub task: TaskConfig,
    #[serde(default)]
    pub data: DataSpec,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub train: TrainSpec,
    #[serde(default)]
    pub eval: EvalSpec,
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// How jobs are submitted with `--backend slurm` (left out while at its defaults).
    #[serde(default, skip_serializing_if = "SlurmSpec::is_default")]
    pub slurm: SlurmSpec,
    /// Dotted keys to lists of values; their cartesian product is the experiment's trials.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sweep: BTreeMap<String, Vec<toml::Value>>,
    /// An explicit list of trials (dotted keys to values), for irregular sets; combined
    /// with `sweep`, every listed trial is crossed with the sweep's product.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trials: Vec<BTreeMap<String, toml::Value>>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            name: "experiment".into(),
            extends: None,
            task: TaskConfig::default(),
            data: DataSpec::default(),
            policy: PolicySection::default(),
            train: TrainSpec::default(),
            eval: EvalSpec::default(),
            resources: ResourcesSpec::default(),
            slurm: SlurmSpec::default(),
            sweep: BTreeMap::new(),
            trials: Vec::new(),
        }
    }
}

/// `[data]`: demonstrations from the task's oracle (`demos`, `seed`) or a folder (`path`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    pub demos: usize,
    pub seed: u64,
    /// A folder of seed-format JSON demos; when set, `demos` and `seed` are not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Observations per window (IBC: 2).
    pub obs_seq_len: usize,
    /// Widening of the action sampling bounds, as a fraction of the data's range.
    pub boundary_buffer: f32,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            demos: 2000,
            seed: 0,
            path: None,
            obs_seq_len: 2,
            boundary_buffer: 0.05,
        }
    }
}

/// `[policy]`: which policy (`ebm`, `ar_ebm`: one energy model per action dimension, or
/// `mse`) and its network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySection {
    pub kind: String,
    pub hidden: i64,
    pub blocks: usize,
    pub dropout: f64,
    pub layer_norm: bool,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            kind: "ebm".into(),
            hidden: 256,
            blocks: 1,
            dropout: 0.0,
            layer_norm: false,
        }
    }
}

/// `[train]`: optimisation, objective and bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    pub iterations: u64,
    pub batch_size: i64,
    pub lr: f64,
    pub lr_decay_steps: u64,
    pub lr_decay_rate: f64,
    pub lr_staircase: bool,
    pub seed: u64,
    /// Save a checkpoint every this many iterations (and at the end).
    pub checkpoint_every: u64,
    /// Evaluate every this many iterations (0: only at the end).
    pub eval_every: u64,
    /// Write a metrics row every this many iterations.
    pub log_every: u64,
    /// InfoNCE temperature (EBM).
    pub temperature: f64,
    pub negatives: NegativesConfig,
    pub grad_penalty: GradPenaltyConfig,
    /// How matrix products run: `auto` (TF32 on a GPU, fp32 on the CPU), `fp32`, `tf32`,
    /// `bf16`. Left out of the resolved spec while `auto`, so trial ids of specs that do
    /// not set it stay as they were.
    #[serde(skip_serializing_if = "Precision::is_auto")]
    pub precision: Precision,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            iterations: 100_000,
            batch_size: 512,
            lr: 1e-3,
            lr_decay_steps: 100,
            lr_decay_rate: 0.99,
            lr_staircase: false,
            seed: 0,
            checkpoint_every: 5000,
            eval_every: 10_000,
            log_every: 10,
            temperature: 1.0,
            negatives: NegativesConfig::default(),
            grad_penalty: GradPenaltyConfig::default(),
            precision: Precision::Auto,
        }
    }
}

impl TrainSpec {
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            lr: self.lr,
            decay_steps: self.lr_decay_steps,
            decay_rate: self.lr_decay_rate,
            staircase: self.lr_staircase,
        }
    }
}

/// `[eval]`: rollouts and how the EBM picks actions in them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSpec {
    pub episodes: usize,
    /// Episode seeds are derived from this, so every evaluation faces the same episodes.
    pub seed: u64,
    pub inference: InferenceKind,
    pub samples: i64,
    pub iters: usize,
    pub noise_scale: f64,
    pub noise_shrink: f64,
    pub temperature: f64,
    pub langevin_samples: i64,
    pub langevin_steps: usize,
    pub chunk_rows: i64,
    /// What energies are computed in when acting (`auto`: bf16 on a GPU, fp32 on the CPU).
    #[serde(skip_serializing_if = "Precision::is_auto")]
    pub precision: Precision,
    /// One PNG per episode of the final evaluation.
    pub plots: bool,
}

impl Default for EvalSpec {
    fn default() -> Self {
        let i = InferenceConfig::default();
        Self {
            episodes: 100,
            seed: 1_000_000,
            inference: i.kind,
            samples: i.samples,
            iters: i.iters,
            noise_scale: i.noise_scale,
            noise_shrink: i.noise_shrink,
            temperature: i.temperature,
            langevin_samples: i.langevin_samples,
            langevin_steps: i.langevin_steps,
            chunk_rows: i.chunk_rows,
            precision: i.precision,
            plots: false,
        }
    }
}

impl EvalSpec {
    /// These settings with `inference`'s in place of theirs (the way a checkpoint acts).
    pub fn with_inference(self, inference: &InferenceConfig) -> Self {
        Self {
            inference: inference.kind,
            samples: inference.samples,
            iters: inference.iters,
            noise_scale: inference.noise_scale,
            noise_shrink: inference.noise_shrink,
            temperature: inference.temperature,
            langevin_samples: inference.langevin_samples,
            langevin_steps: inference.langevin_steps,
            chunk_rows: inference.chunk_rows,
            precision: inference.precision,
            ..self
        }
    }

    pub fn inference(&self) -> InferenceConfig {
        InferenceConfig {
            kind: self.inference,
            samples: self.samples,
            iters: self.iters,
            noise_scale: self.noise_scale,
            noise_shrink: self.noise_shrink,
            temperature: self.temperature,
            langevin_samples: self.langevin_samples,
            langevin_steps: self.langevin_steps,
            chunk_rows: self.chunk_rows,
            precision: self.precision,
        }
    }
}

/// `[resources]`: where trials run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourcesSpec {
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Trials run at once on each GPU.
    pub slots_per_gpu: usize,
    /// Trials run at once on the CPU (0: one per core, never more than there are trials).
    pub cpu_slots: usize,
    /// libtorch intra-op threads per trial (0: the cores shared among the slots in use).
    pub threads: usize,
    /// Trials of one shape trained together as one batched model in one worker: a number,
    /// or `auto` (as many as half a GPU holds; one on the CPU). Left out of the resolved
    /// spec while `auto`.
    #[serde(skip_serializing_if = "PackSize::is_auto")]
    pub pack: PackSize,
    /// On a GPU, replay a pack's Langevin chains as a CUDA graph (one launch per chain
    /// instead of ~20 per step), and a solo MSE, autoregressive or uniform-trained
    /// model's whole iteration (one launch instead of hundreds), each once its first
    /// replay gave what the eager computation gives. Left out of the resolved spec while on.
    #[serde(skip_serializing_if = "is_true")]
    pub cuda_graphs: bool,
    /// Where slots share a GPU, run their workers under a CUDA MPS server of the run's own
    /// (their kernels side by side instead of taking turns): `off` (default, until its gain
    /// with packs is measured), `auto` (where `nvidia-cuda-mps-control` can be started),
    /// `on` (or an error). Left out of the resolved spec while `off`.
    #[serde(skip_serializing_if = "MpsMode::is_off")]
    pub mps: MpsMode,
}

/// `resources.mps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MpsMode {
    #[default]
    Off,
    Auto,
    On,
}

impl MpsMode {
    pub fn is_off(&self) -> bool {
        *self == MpsMode::Off
    }
}

fn is_true(value: &bool) -> bool {
    *value
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            slots_per_gpu: 2,
            cpu_slots: 0,
            threads: 0,
            pack: PackSize::Auto,
            cuda_graphs: true,
            mps: MpsMode::Off,
        }
    }
}

/// `[slurm]`: the `sbatch` options of each job with `--backend slurm` (empty: Slurm's
/// defaults). Not part of a trial's identity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmSpec {
    pub partition: String,
    pub account: String,
    /// `--time`, e.g. `"2:00:00"`.
    pub time_limit: String,
    /// GPUs per job (`--gres=gpu:N`); 0: a CPU job.
    pub gpus: u32,
    /// CPUs per job (`--cpus-per-task`; 0: `resources.threads`, else 1).
    pub cpus: u32,
    /// `--mem`, e.g. `"8G"`.
    pub mem: String,
    /// More `sbatch` options, as they are written, e.g. `["--qos=high"]`.
    pub extra: Vec<String>,
}

impl SlurmSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl Spec {
    /// The policy this spec trains, with shapes taken from the task.
    pub fn policy_spec(&self) -> anyhow::Result<PolicySpec> {
        let p = &self.policy;
        let task = self.task.build()?;
        let net = NetConfig {
            obs_seq_len: self.data.obs_seq_len as i64,
            obs_dim: task.info().obs_dim as i64,
            action_dim: task.info().action_dim as i64,
            hidden: p.hidden,
            blocks: p.blocks,
            dropout: p.dropout,
            layer_norm: p.layer_norm,
        };
        let loss = EbmLossConfig {
            temperature: self.train.temperature,
            negatives: self.train.negatives.clone(),
            grad_penalty: self.train.grad_penalty.clone(),
        };
        let inference = self.eval.inference();
        Ok(match p.kind.as_str() {
            "mse" => PolicySpec::Mse { net },
            "ar_ebm" => PolicySpec::ArEbm {
                net,
                loss,
                inference,
            },
            _ => PolicySpec::Ebm {
                net,
                loss,
                inference,
            },
        })
    }
}
