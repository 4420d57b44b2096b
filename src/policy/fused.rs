//! Fused libtorch operations that tch does not bind, or binds wrongly, through the shim in
//! `csrc/torch_shim.cpp`.

use std::ffi::c_void;

use tch::Tensor;

extern "C" {
    fn ebmlab_addmm_relu_into(
        out: *mut c_void,
        bias: *mut c_void,
        mat1: *mut c_void,
        mat2: *mut c_void,
    ) -> i32;
}

/// `relu(bias + mat1 @ mat2)` for a bias `[n]` and matrices `[m, k]`, `[k, n]`: one call,
/// and on a GPU, where ATen's conditions for it hold (contiguous bias and output, a
/// supported element type and size), one cuBLASLt product whose epilogue adds the bias and
/// applies the ReLU, with no pass of their own over the output.
pub fn addmm_relu(bias: &Tensor, mat1: &Tensor, mat2: &Tensor) -> Tensor {
    let out = Tensor::empty(
        [mat1.size()[0], mat2.size()[1]],
        (mat1.kind(), mat1.device()),
    );
    let ptr = |t: &Tensor| t.as_ptr() as *mut c_void;
    // SAFETY: the shim reads the tensors behind tch's pointers and writes into `out`'s
    // storage (its shape checked by libtorch), which lives on here.
    let status = unsafe { ebmlab_addmm_relu_into(ptr(&out), ptr(bias), ptr(mat1), ptr(mat2)) };
    if status != 0 {
        // libtorch refused the fused call: the same result in two.
        return bias.addmm(mat1, mat2).relu();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn the_fused_product_adds_the_bias_and_applies_the_relu() {
        let options = (Kind::Float, Device::Cpu);
        let (bias, x, w) = (
            Tensor::randn([5], options),
            Tensor::randn([7, 3], options),
            Tensor::randn([5, 3], options),
        );
        let fused = addmm_relu(&bias, &x, &w.tr());
        let expected = (x.matmul(&w.tr()) + &bias).relu();
        assert!(
            expected.min().double_value(&[]) == 0.0,
            "the ReLU cuts some"
        );
        let diff = (fused - expected).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
    }
}
