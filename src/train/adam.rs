//! Adam whose moments are plain tensors, so a checkpoint can hold them and a resumed run
//! continues exactly (tch's built-in optimizer keeps its state inside libtorch).
//! The update is PyTorch's `torch.optim.Adam` (no weight decay, no amsgrad).
//!
//! For a pack of K models whose parameters are stacked along a first dimension, each
//! member has its own learning rate ([`Adam::step_members`]) and its own slice of the
//! moments, saved and loaded as a solo optimizer's state ([`Adam::save_member`]).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use tch::Tensor;

use super::transfer::upload;

#[derive(Debug)]
struct Moments {
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

#[derive(Debug)]
pub struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Updates applied so far (PyTorch's `state['step']`).
    steps: i64,
    /// By parameter name, so state files are matched by name, not position.
    params: BTreeMap<String, Moments>,
}

impl Adam {
    /// Adam over the named trainable variables (`VarStore::variables()`).
    pub fn new(variables: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        let params = variables
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, param)| {
                let moments = Moments {
                    exp_avg: param.zeros_like(),
                    exp_avg_sq: param.zeros_like(),
                    param,
                };
                (name, moments)
            })
            .collect();
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            steps: 0,
            params,
        }
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    pub fn zero_grad(&mut self) {
        for m in self.params.values_mut() {
            let mut grad = m.param.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// Applies one update with learning rate `lr` from the parameters' `.grad()`.
    pub fn step(&mut self, lr: f64) {
        self.update(&[lr]);
    }

    /// One update of a pack: parameters are stacked along their first dimension, member
    /// `k` with learning rate `lrs[k]` (the same arithmetic as K solo updates).
    pub fn step_members(&mut self, lrs: &[f64]) {
        self.update(lrs);
    }

    fn update(&mut self, lrs: &[f64]) {
        self.steps += 1;
        let bias1 = 1.0 - self.beta1.powi(self.steps as i32);
        let bias2_sqrt = (1.0 - self.beta2.powi(self.steps as i32)).sqrt();
        let (beta1, beta2, eps) = (self.beta1, self.beta2, self.eps);
        let scales: Vec<f32> = lrs.iter().map(|lr| (lr / bias1) as f32).collect();
        // Per-member scales uploaded once per step, not once per parameter, from pinned
        // memory without waiting (a plain upload waits for the device's queue to drain).
        let member_scales = match (scales.len(), self.params.values().next()) {
            (2.., Some(m)) => Some(upload(&scales, m.param.device())),
            _ => None,
        };
        tch::no_grad(|| {
            for m in self.params.values_mut() {
                let grad = m.param.grad();
                if !grad.defined() {
                    continue;
                }
                let _ = m.exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = m.exp_avg_sq.g_mul_scalar_(beta2);
                let _ = m.exp_avg_sq.addcmul_(&(&grad * (1.0 - beta2)), &grad);
                let denom = m.exp_avg_sq.sqrt() / bias2_sqrt + eps;
                let step = match scales[..] {
                    [scale] => &m.exp_avg / denom * f64::from(scale),
                    _ => {
                        // One scale per member, broadcast over the member's slice.
                        let mut shape = vec![1i64; m.param.dim()];
                        shape[0] = scales.len() as i64;
                        let scale = member_scales
                            .as_ref()
                            .expect("uploaded for several members")
                            .view(shape.as_slice());
                        &m.exp_avg / denom * scale
                    }
                };
                let _ = m.param.g_sub_(&step);
            }
        });
    }

    /// Keeps the pack members at `keep` (indices along the first dimension), with `params`
    /// the model's parameters after the same selection.
    pub fn retain_members(&mut self, keep: &Tensor, params: Vec<(String, Tensor)>) {
        for (name, param) in params {
            if let Some(m) = self.params.get_mut(&name) {
                m.exp_avg = m.exp_avg.index_select(0, keep);
                m.exp_avg_sq = m.exp_avg_sq.index_select(0, keep);
                m.param = param;
            }
        }
    }

    /// Moments (of pack member `member`, when given) and step count under the names a
    /// solo optimizer saves: `exp_avg.NAME`, `exp_avg_sq.NAME`, `step`.
    fn state(&self, member: Option<i64>) -> Vec<(String, Tensor)> {
        let part = |t: &Tensor| match member {
            Some(k) => t.get(k),
            None => t.shallow_clone(),
        };
        let mut named: Vec<(String, Tensor)> =
            vec![("step".into(), Tensor::from_slice(&[self.steps]))];
        for (name, m) in &self.params {
            for (prefix, t) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
                named.push((
                    format!("{prefix}.{name}"),
                    part(t).to_device(tch::Device::Cpu),
                ));
            }
        }
        named
    }

    /// Writes moments and step count (safetensors: `exp_avg.NAME`, `exp_avg_sq.NAME`, `step`).
    pub fn save(&self, path: &Path) -> Result<()> {
        Tensor::write_safetensors(&self.state(None), path)
            .with_context(|| format!("writing optimizer state {}", path.display()))
    }

    /// Writes pack member `k`'s state as a solo optimizer's file.
    pub fn save_member(&self, k: i64, path: &Path) -> Result<()> {
        Tensor::write_safetensors(&self.state(Some(k)), path)
            .with_context(|| format!("writing optimizer state {}", path.display()))
    }

    /// Restores what [`Adam::save`] wrote; every parameter must be present with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        self.load_into(path, None)
    }

    /// Restores pack member `k` from a solo optimizer's file (all members share the step).
    pub fn load_member(&mut self, k: i64, path: &Path) -> Result<()> {
        self.load_into(path, Some(k))
    }

    fn load_into(&mut self, path: &Path, member: Option<i64>) -> Result<()> {
        let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("reading optimizer state {}", path.display()))?
            .into_iter()
            .collect();
        let Some(step) = tensors.get("step") else {
            bail!("{}: no `step` tensor", path.display());
        };
        let steps = step.int64_value(&[0]);
        for (name, m) in self.params.iter_mut() {
            for (key, target) in [
                (format!("exp_avg.{name}"), &mut m.exp_avg),
                (format!("exp_avg_sq.{name}"), &mut m.exp_avg_sq),
            ] {
                let Some(saved) = tensors.get(&key) else {
                    bail!("{}: missing `{key}`", path.display());
                };
                let mut target = match member {
                    Some(k) => target.get(k),
                    None => target.shallow_clone(),
                };
                ensure!(
                    saved.size() == target.size(),
                    "{}: `{key}` has shape {:?}, the model needs {:?}",
                    path.display(),
                    saved.size(),
                    target.size()
                );
                tch::no_grad(|| target.copy_(&saved.to_kind(target.kind())));
            }
        }
        self.steps = steps;
        Ok(())
    }
}
