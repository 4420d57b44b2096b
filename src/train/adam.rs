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

use super::foreach::{self, AdamBetas, LearningRate};
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
    /// `steps` as a float scalar on the parameters' device, for the fused update.
    step_count: Option<Tensor>,
    /// Whether updates go through ATen's fused kernel: on a GPU, where a small network's
    /// step waits on its launches (until libtorch refuses it once). The CPU keeps the
    /// tensor-by-tensor update, which gains little there and gave every CPU result
    /// recorded so far (the fused one rounds differently).
    fused: bool,
}

impl Adam {
    /// Adam over the named trainable variables (`VarStore::variables()`).
    pub fn new(variables: impl IntoIterator<Item = (String, Tensor)>) -> Self {
        let params: BTreeMap<String, Moments> = variables
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
        let fused = params
            .values()
            .next()
            .is_some_and(|m| m.param.device().is_cuda());
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            steps: 0,
            params,
            step_count: None,
            fused,
        }
    }

    /// The same optimizer with the fused update on or off whatever the device (tests
    /// check the fused one on the CPU).
    #[cfg(test)]
    fn with_fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    pub fn zero_grad(&self) {
        let grads: Vec<Tensor> = self
            .params
            .values()
            .map(|m| m.param.grad())
            .filter(Tensor::defined)
            .collect();
        let grads: Vec<&Tensor> = grads.iter().collect();
        if grads.is_empty() || foreach::zero_(&grads).is_ok() {
            return;
        }
        for grad in grads {
            let _ = grad.shallow_clone().zero_();
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
        if self.fused {
            match self.fused_update(lrs) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!("{e:#}: Adam updates each tensor on its own from now");
                    self.fused = false;
                }
            }
        }
        self.update_each(lrs);
    }

    /// [`Adam::update`] in ATen's fused kernel (the same arithmetic to rounding, a launch or
    /// two on a GPU): all parameters at once where every member shares the learning rate
    /// (a solo model, or a pack on one schedule), else each member's slices with its own,
    /// so that a member's update is, to the bit, the one it gets alone. An error means
    /// nothing was updated.
    fn fused_update(&mut self, lrs: &[f64]) -> Result<()> {
        if self.params.is_empty() {
            return Ok(());
        }
        self.sync_step_count();
        let shared = lrs.iter().all(|lr| *lr == lrs[0]);
        if shared {
            return self.fused_call(None, LearningRate::Value(lrs[0]));
        }
        for (k, lr) in lrs.iter().enumerate() {
            let done = self.fused_call(Some(k as i64), LearningRate::Value(*lr));
            // libtorch refuses at once or not at all: a pack half updated cannot go on.
            if let Err(e) = done {
                assert!(k == 0, "{e:#} after {k} members were updated");
                return Err(e);
            }
        }
        Ok(())
    }

    /// One fused update of every parameter with a gradient (of pack member `member` alone,
    /// when given), the step count read from `step_count`.
    fn fused_call(&self, member: Option<i64>, lr: LearningRate) -> Result<()> {
        let step = self
            .step_count
            .as_ref()
            .context("the fused update needs its step count on the device")?;
        let live: Vec<(Tensor, &Moments)> = self
            .params
            .values()
            .map(|m| (m.param.grad(), m))
            .filter(|(g, _)| g.defined())
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        let betas = AdamBetas {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
        };
        let part = |t: &Tensor| match member {
            Some(k) => t.get(k),
            None => t.shallow_clone(),
        };
        let of = |pick: &dyn Fn(&Moments) -> &Tensor| -> Vec<Tensor> {
            live.iter().map(|(_, m)| part(pick(m))).collect()
        };
        let (params, exp_avgs, exp_avg_sqs) = (
            of(&|m| &m.param),
            of(&|m| &m.exp_avg),
            of(&|m| &m.exp_avg_sq),
        );
        let grads: Vec<Tensor> = live.iter().map(|(g, _)| part(g)).collect();
        tch::no_grad(|| {
            foreach::fused_adam(
                &refs(&params),
                &refs(&grads),
                &refs(&exp_avgs),
                &refs(&exp_avg_sqs),
                step,
                lr,
                betas,
            )
        })
    }

    /// The step count on the parameters' device (made on first use), set to the host's.
    fn sync_step_count(&mut self) {
        let Some(first) = self.params.values().next() else {
            return;
        };
        let device = first.param.device();
        let step = self
            .step_count
            .get_or_insert_with(|| Tensor::zeros([], (tch::Kind::Float, device)));
        tch::no_grad(|| {
            let _ = step.fill_(self.steps as f64);
        });
    }

    /// Whether updates go through ATen's fused kernel (what a CUDA graph captures).
    pub(super) fn is_fused(&self) -> bool {
        self.fused
    }

    /// Readies [`Adam::captured_update`]: the fused update (a GPU's), its step count on the
    /// device holding the host's.
    pub(super) fn prepare_capture(&mut self) -> Result<()> {
        ensure!(self.fused, "only the fused update runs in a CUDA graph");
        ensure!(!self.params.is_empty(), "no parameters to update");
        self.sync_step_count();
        Ok(())
    }

    /// One update of a solo model whose every input is on the device, as a CUDA graph
    /// replays it: the step count grows there and the rate is read from `lr` (a
    /// one-element float tensor). The host's count is left alone: [`Adam::count_update`] once per run of it.
    pub(super) fn captured_update(&self, lr: &Tensor) -> Result<()> {
        let step = self.step_count.as_ref().context("prepare_capture first")?;
        tch::no_grad(|| {
            let _ = step.shallow_clone().g_add_scalar_(1.0);
        });
        self.fused_call(None, LearningRate::OnDevice(lr))
    }

    /// Counts an update [`Adam::captured_update`] made on the device.
    pub(super) fn count_update(&mut self) {
        self.steps += 1;
    }

    /// Parameters, moments and the device step count: the state an update changes.
    fn state_tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.params
            .values()
            .flat_map(|m| [&m.param, &m.exp_avg, &m.exp_avg_sq])
            .chain(self.step_count.as_ref())
    }

    /// Copies of the state an update changes (for [`Adam::restore_snapshot`]: a step tried
    /// and taken back).
    pub(super) fn snapshot(&self) -> Vec<Tensor> {
        tch::no_grad(|| self.state_tensors().map(|t| t.detach().copy()).collect())
    }

    /// Puts back what [`Adam::snapshot`] copied (in place: a CUDA graph keeps the tensors).
    pub(super) fn restore_snapshot(&self, saved: &[Tensor]) {
        tch::no_grad(|| {
            for (target, value) in self.state_tensors().zip(saved) {
                target.shallow_clone().copy_(value);
            }
        });
    }

    /// [`Adam::update`] tensor by tensor, each member of a pack with its own rate: where
    /// libtorch refused the fused kernel.
    fn update_each(&mut self, lrs: &[f64]) {
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

/// References to each tensor of `v`, as the fused calls take them.
fn refs(v: &[Tensor]) -> Vec<&Tensor> {
    v.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// An Adam over two fresh parameters on `device` (the same values for every call), and
    /// them.
    fn adam_on(fused: bool, device: Device) -> (Adam, Vec<Tensor>) {
        // Fixed values, not the global generator's (tests run in parallel).
        let values =
            |n: i64, phase: f64| (Tensor::arange(n, (Kind::Float, device)) * 0.7 + phase).sin();
        let params = vec![
            values(12, 0.0).view([4, 3]).set_requires_grad(true),
            values(3, 1.0).set_requires_grad(true),
        ];
        let named = params
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("p{i}"), p.shallow_clone()));
        (Adam::new(named).with_fused(fused), params)
    }

    /// Five steps on the same quadratic, the learning rate halved midway.
    fn train_on(fused: bool, device: Device) -> (Vec<Tensor>, Adam) {
        let (mut adam, params) = adam_on(fused, device);
        for step in 0..5 {
            adam.zero_grad();
            let loss = params
                .iter()
                .fold(Tensor::zeros([], (Kind::Float, device)), |sum, p| {
                    sum + (p * p * (step + 1) as f64).sum(Kind::Float)
                });
            loss.backward();
            adam.step(if step < 3 { 1e-2 } else { 5e-3 });
        }
        (params, adam)
    }

    #[test]
    fn the_fused_update_is_the_tensor_by_tensor_one_to_rounding() {
        fused_and_each_agree(Device::Cpu);
        let param = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let cpu = Adam::new([("p".to_owned(), param)]);
        assert!(!cpu.fused, "the CPU keeps the tensor-by-tensor update");
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_adam_is_fused_and_agrees_with_the_tensor_by_tensor_update() {
        let device = Device::Cuda(0);
        let param = Tensor::zeros([3], (Kind::Float, device)).set_requires_grad(true);
        assert!(Adam::new([("p".to_owned(), param)]).fused, "fused on a GPU");
        fused_and_each_agree(device);
    }

    fn fused_and_each_agree(device: Device) {
        let ((fused, fused_adam), (each, each_adam)) =
            (train_on(true, device), train_on(false, device));
        assert!(fused_adam.fused, "libtorch took the fused update");
        assert_eq!((fused_adam.steps(), each_adam.steps()), (5, 5));
        for (a, b) in fused.iter().zip(&each) {
            let moved = (a - b).abs().max().double_value(&[]);
            assert!(moved < 1e-6, "{moved}");
            assert!(a.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        }
        for (name, m) in &fused_adam.params {
            let other = &each_adam.params[name];
            for (x, y) in [
                (&m.exp_avg, &other.exp_avg),
                (&m.exp_avg_sq, &other.exp_avg_sq),
            ] {
                // Relative: on a GPU the fused kernel's FMAs round the moments (up to ~3
                // here) a few ulps apart per step (seen: 2.6e-6 after 5 steps on an H100); a
                // wrong beta would be off by percents.
                let diff = (x - y).abs().max().double_value(&[]);
                let scale = y.abs().max().double_value(&[]);
                assert!(diff <= 1e-4 * scale, "{name}: {diff} of {scale}");
            }
        }
    }

    #[test]
    fn a_pack_member_is_updated_to_the_bit_as_alone() {
        pack_members_update_as_alone(Device::Cpu);
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_a_pack_member_is_updated_to_the_bit_as_alone() {
        pack_members_update_as_alone(Device::Cuda(0));
    }

    fn pack_members_update_as_alone(device: Device) {
        // Two members stacked, each with its own learning rate, beside each alone.
        let stacked: Vec<Tensor> = [vec![2i64, 5, 3], vec![2, 5]]
            .iter()
            .enumerate()
            .map(|(i, shape)| {
                let n: i64 = shape.iter().product();
                (Tensor::arange(n, (Kind::Float, device)) * 0.3 + i as f64)
                    .sin()
                    .view(shape.as_slice())
                    .set_requires_grad(true)
            })
            .collect();
        let mut pack = Adam::new(
            stacked
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("p{i}"), p.shallow_clone())),
        )
        .with_fused(true);
        let mut alone: Vec<(Adam, Vec<Tensor>)> = (0..2)
            .map(|k| {
                let params: Vec<Tensor> = stacked
                    .iter()
                    .map(|p| p.get(k).detach().copy().set_requires_grad(true))
                    .collect();
                let named = params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("p{i}"), p.shallow_clone()));
                (Adam::new(named).with_fused(true), params)
            })
            .collect();
        let lrs = [1e-2, 3e-3];
        let loss = |params: &[Tensor]| {
            params
                .iter()
                .fold(Tensor::zeros([], (Kind::Float, device)), |sum, p| {
                    sum + (p * p * p).sum(Kind::Float)
                })
        };
        for _ in 0..3 {
            pack.zero_grad();
            loss(&stacked).backward();
            pack.step_members(&lrs);
            for ((adam, params), lr) in alone.iter_mut().zip(lrs) {
                adam.zero_grad();
                loss(params).backward();
                adam.step(lr);
            }
        }
        for (k, (_, params)) in alone.iter().enumerate() {
            for (p, stacked) in params.iter().zip(&stacked) {
                let diff = (p - stacked.get(k as i64)).abs().max().double_value(&[]);
                assert_eq!(diff, 0.0, "member {k}");
            }
        }
    }

    #[test]
    fn a_captured_update_counted_on_the_host_is_the_fused_update() {
        // What a CUDA graph replays (the count grown on the device, the rate read from a
        // tensor), run eagerly: the same weights and moments as the fused update.
        let (mut eager, a) = adam_on(true, Device::Cpu);
        let (mut captured, b) = adam_on(true, Device::Cpu);
        captured.prepare_capture().unwrap();
        let rate = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        for step in 0..4 {
            let lr = 1e-2 / f64::from(step + 1);
            for (adam, params) in [(&eager, &a), (&captured, &b)] {
                adam.zero_grad();
                let loss = params
                    .iter()
                    .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |sum, p| {
                        sum + (p * p * p).sum(Kind::Float)
                    });
                loss.backward();
            }
            eager.step(lr);
            let _ = rate.shallow_clone().fill_(lr);
            captured.captured_update(&rate).unwrap();
            captured.count_update();
        }
        assert_eq!(captured.steps(), 4);
        for (x, y) in a.iter().zip(&b) {
            let diff = (x - y).abs().max().double_value(&[]);
            assert!(diff < 1e-7, "{diff}");
        }
        assert!(adam_on(false, Device::Cpu).0.prepare_capture().is_err());
    }

    #[test]
    fn a_snapshot_restored_takes_back_an_update() {
        let (mut adam, params) = adam_on(true, Device::Cpu);
        adam.prepare_capture().unwrap();
        let before: Vec<Tensor> = params.iter().map(Tensor::copy).collect();
        let saved = adam.snapshot();
        (&params[0].sum(Kind::Float) + params[1].sum(Kind::Float)).backward();
        adam.step(0.1);
        assert!((&params[0] - &before[0]).abs().max().double_value(&[]) > 0.0);
        adam.restore_snapshot(&saved);
        for (p, b) in params.iter().zip(&before) {
            assert_eq!((p - b).abs().max().double_value(&[]), 0.0);
        }
        for m in adam.params.values() {
            assert_eq!(m.exp_avg.abs().max().double_value(&[]), 0.0);
            assert_eq!(m.exp_avg_sq.abs().max().double_value(&[]), 0.0);
        }
        let count = adam.step_count.as_ref().expect("made by prepare_capture");
        assert_eq!(
            count.double_value(&[]),
            0.0,
            "the device count, 1 after the step"
        );
    }

    #[test]
    fn zero_grad_zeroes_every_gradient() {
        let (adam, params) = adam_on(true, Device::Cpu);
        let loss = &params[0].sum(Kind::Float) + params[1].sum(Kind::Float);
        loss.backward();
        adam.zero_grad();
        for p in &params {
            assert_eq!(p.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
    }
}
