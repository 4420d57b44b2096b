//! The optimizer's passes over many tensors in one call (ATen's `_fused_adam_` and
//! `_foreach_*`, through `csrc/torch_shim.cpp`; tch does not bind them). On a GPU each is
//! a launch or two for all of a model's tensors where a pass per tensor costs one or more
//! launches each: a small network's step is mostly launches (MSE's 16-deep one has 34
//! tensors and ten element-wise passes of Adam over each).

use std::ffi::c_void;

use anyhow::{bail, ensure, Result};
use tch::Tensor;

extern "C" {
    fn ebmlab_fused_adam(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        n: i64,
        step: *mut c_void,
        lr: f64,
        lr_tensor: *mut c_void,
        beta1: f64,
        beta2: f64,
        eps: f64,
    ) -> i32;
    fn ebmlab_foreach_zero(list: *mut *mut c_void, n: i64) -> i32;
    fn ebmlab_foreach_norm(list: *mut *mut c_void, n: i64) -> *mut c_void;
}

fn pointers(tensors: &[&Tensor]) -> Vec<*mut c_void> {
    tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// Adam's hyperparameters besides the learning rate.
#[derive(Debug, Clone, Copy)]
pub struct AdamBetas {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// A learning rate: a number, or a one-element float tensor on the parameters' device
/// (which a CUDA graph reads anew at each replay, where a number would be captured as a
/// constant).
#[derive(Debug, Clone, Copy)]
pub enum LearningRate<'a> {
    Value(f64),
    OnDevice(&'a Tensor),
}

/// One Adam update (PyTorch's, no weight decay) of `params` in place, with their `grads`
/// and moments; `step` is a float scalar on their device holding the count after this
/// update (1 for the first). All lists are as long as `params`, on one device.
pub fn fused_adam(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    step: &Tensor,
    lr: LearningRate,
    betas: AdamBetas,
) -> Result<()> {
    let n = params.len();
    ensure!(
        grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n,
        "fused Adam: {n} parameters, {} gradients, {} and {} moments",
        grads.len(),
        exp_avgs.len(),
        exp_avg_sqs.len()
    );
    let (mut p, mut g, mut m, mut v) = (
        pointers(params),
        pointers(grads),
        pointers(exp_avgs),
        pointers(exp_avg_sqs),
    );
    let (lr, lr_tensor) = match lr {
        LearningRate::Value(lr) => (lr, std::ptr::null_mut()),
        LearningRate::OnDevice(t) => (f64::NAN, t.as_ptr() as *mut c_void),
    };
    // SAFETY: every pointer is a live tch tensor for the call's duration (or null, for no
    // learning-rate tensor); the shim updates parameters and moments in place and catches
    // C++ exceptions.
    let status = unsafe {
        ebmlab_fused_adam(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            n as i64,
            step.as_ptr() as *mut c_void,
            lr,
            lr_tensor,
            betas.beta1,
            betas.beta2,
            betas.eps,
        )
    };
    if status != 0 {
        bail!("libtorch refused the fused Adam update of {n} parameters");
    }
    Ok(())
}

/// Zeroes the tensors in place.
pub fn zero_(tensors: &[&Tensor]) -> Result<()> {
    let mut list = pointers(tensors);
    // SAFETY: live tch tensors, zeroed in place; the shim catches C++ exceptions.
    let status = unsafe { ebmlab_foreach_zero(list.as_mut_ptr(), list.len() as i64) };
    if status != 0 {
        bail!("libtorch refused to zero {} tensors at once", list.len());
    }
    Ok(())
}

/// The L2 norm of all the tensors' elements together, as a scalar on their device.
pub fn norm(tensors: &[&Tensor]) -> Result<Tensor> {
    ensure!(!tensors.is_empty(), "the norm of no tensors");
    let mut list = pointers(tensors);
    // SAFETY: live tch tensors, read only; the shim returns a new tensor (or null) that
    // tch then owns.
    let out = unsafe { ebmlab_foreach_norm(list.as_mut_ptr(), list.len() as i64) };
    if out.is_null() {
        bail!("libtorch refused the norm of {} tensors", list.len());
    }
    // SAFETY: a fresh `torch::Tensor*` no one else owns.
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn random(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn the_norm_of_several_tensors_is_that_of_their_elements_together() {
        let (a, b) = (random(&[3, 4]), random(&[5]));
        let together = Tensor::cat(&[a.view([-1]), b.shallow_clone()], 0).norm();
        let diff = (norm(&[&a, &b]).unwrap() - together)
            .abs()
            .double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
    }

    #[test]
    fn zeroing_reaches_every_tensor() {
        let (a, b) = (random(&[3, 4]), random(&[5]));
        zero_(&[&a, &b]).unwrap();
        assert_eq!(a.abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(b.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn the_first_fused_adam_step_moves_each_weight_by_the_learning_rate_against_its_gradient() {
        // After one step m / (1 - beta1) = g and sqrt(v / (1 - beta2)) = |g|: each weight
        // moves by lr * g / (|g| + eps), i.e. lr against the gradient's sign.
        let param = random(&[4, 3]);
        let before = param.copy();
        let grad = random(&[4, 3]);
        let (m, v) = (param.zeros_like(), param.zeros_like());
        let step = Tensor::from_slice(&[1f32]);
        let betas = AdamBetas {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let lr = LearningRate::Value(0.01);
        fused_adam(&[&param], &[&grad], &[&m], &[&v], &step, lr, betas).unwrap();
        let expected = &before - grad.sign() * 0.01;
        let diff = (param - &expected).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        let m_diff = (m - &grad * 0.1).abs().max().double_value(&[]);
        assert!(m_diff < 1e-7, "{m_diff}");
        assert!(fused_adam(&[&before], &[], &[], &[], &step, lr, betas).is_err());

        // The rate as a tensor: the same update.
        let again = before.copy();
        let (m, v) = (again.zeros_like(), again.zeros_like());
        let rate = Tensor::from_slice(&[0.01f32]).squeeze();
        let lr = LearningRate::OnDevice(&rate);
        fused_adam(&[&again], &[&grad], &[&m], &[&v], &step, lr, betas).unwrap();
        let diff = (again - expected).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
    }
}
