//! Batched products whose epilogue applies a ReLU and keeps its mask as bits, or multiplies
//! by such a mask: cuBLASLt's `RELU_AUX` and `DRELU`, through the shim in
//! `csrc/cublas_lt.cpp` (ATen offers epilogues only for unbatched products). The Langevin
//! gradient uses them to drop its ReLU and masked-gradient passes over `[K, rows, width]`
//! tensors. CUDA only; elsewhere every call fails and the caller computes eagerly.

use std::sync::OnceLock;

use anyhow::{bail, ensure, Result};
use tch::{Device, Kind, Tensor};

/// The mask of `relu(x @ w)` for `[K, rows, cols]` products: one bit per element, each
/// product's rows `ld` bits apart (cuBLASLt wants a multiple of 128).
pub struct ReluMask {
    bits: Tensor,
    ld: i64,
    shape: [i64; 3],
}

impl ReluMask {
    fn new(shape: [i64; 3], device: Device) -> Self {
        let ld = (shape[2] + 127) / 128 * 128;
        let bytes = shape[0] * shape[1] * ld / 8;
        Self {
            bits: Tensor::empty([bytes], (Kind::Uint8, device)),
            ld,
            shape,
        }
    }
}

/// Whether this process can make these products: built with the shim, and cuBLASLt's
/// functions found in it (the first failure is logged once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| match ffi::available() {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("no cuBLASLt epilogues: {e:#}");
            false
        }
    })
}

/// `relu(x @ w)` `[K, rows, cols]` for `x` `[K, rows, inner]` and `w` `[K, inner, cols]`,
/// and the mask of its positive elements.
pub fn bmm_relu(x: &Tensor, w: &Tensor) -> Result<(Tensor, ReluMask)> {
    let out = output(x, w)?;
    let shape: [i64; 3] = out.size().try_into().expect("three dimensions");
    let mask = ReluMask::new(shape, x.device());
    ffi::bmm(x, w, &out, Some((1, &mask)))?;
    Ok((out, mask))
}

/// `(x @ w) ⊙ mask` (the mask as 0 or 1), the product of the mask's shape.
pub fn bmm_masked(x: &Tensor, w: &Tensor, mask: &ReluMask) -> Result<Tensor> {
    let out = output(x, w)?;
    ensure!(
        out.size() == mask.shape && mask.bits.device() == x.device(),
        "a product of shape {:?} on {:?} under a mask of shape {:?} on {:?}",
        out.size(),
        x.device(),
        mask.shape,
        mask.bits.device()
    );
    ffi::bmm(x, w, &out, Some((2, mask)))?;
    Ok(out)
}

/// The uninitialised output of `x @ w`, after checking what the shim assumes.
fn output(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (xs, ws) = (x.size(), w.size());
    ensure!(
        xs.len() == 3 && ws.len() == 3 && xs[0] == ws[0] && xs[2] == ws[1],
        "batched product of {xs:?} and {ws:?}"
    );
    ensure!(
        matches!(x.device(), Device::Cuda(_)) && x.device() == w.device(),
        "cuBLASLt products run on one CUDA device"
    );
    ensure!(
        x.kind() == w.kind() && matches!(x.kind(), Kind::Float | Kind::BFloat16),
        "cuBLASLt products here are fp32 or bf16, not {:?} and {:?}",
        x.kind(),
        w.kind()
    );
    let aligned = |t: &Tensor| t.data_ptr() as usize % 256 == 0;
    ensure!(
        x.is_contiguous() && w.is_contiguous() && aligned(x) && aligned(w),
        "cuBLASLt products here read contiguous tensors that start 256-byte aligned"
    );
    Ok(Tensor::empty([xs[0], xs[1], ws[2]], (x.kind(), x.device())))
}

/// The shim's element kind: fp32 (TF32 products where ATen's would use them) or bf16.
fn element_kind(kind: Kind) -> Result<i32> {
    Ok(match kind {
        Kind::Float => 0,
        Kind::BFloat16 => 2,
        other => bail!("no cuBLASLt product for {other:?}"),
    })
}

#[cfg(ebmlab_cublas_lt)]
mod ffi {
    use std::ffi::{c_void, CStr};

    use anyhow::{anyhow, Result};
    use tch::{Device, Tensor};

    use super::{element_kind, ReluMask};

    extern "C" {
        fn ebmlab_lt_last_error() -> *const std::ffi::c_char;
        fn ebmlab_lt_available() -> i32;
        fn ebmlab_lt_bmm(
            device: i32,
            kind: i32,
            epilogue: i32,
            batch: i64,
            rows: i64,
            inner: i64,
            cols: i64,
            x: *const c_void,
            w: *const c_void,
            out: *mut c_void,
            aux: *mut c_void,
            aux_ld: i64,
        ) -> i32;
    }

    fn last_error() -> anyhow::Error {
        // SAFETY: the shim returns a NUL-terminated string owned by this thread.
        let text = unsafe { CStr::from_ptr(ebmlab_lt_last_error()) };
        anyhow!("{}", text.to_string_lossy())
    }

    pub fn available() -> Result<()> {
        // SAFETY: looks up functions by name; no arguments.
        match unsafe { ebmlab_lt_available() } {
            1 => Ok(()),
            _ => Err(last_error()),
        }
    }

    /// `out = x @ w` with epilogue 0 (none), 1 (ReLU, mask written) or 2 (mask applied).
    pub fn bmm(x: &Tensor, w: &Tensor, out: &Tensor, mask: Option<(i32, &ReluMask)>) -> Result<()> {
        let Device::Cuda(device) = x.device() else {
            unreachable!("checked by the caller");
        };
        let (s, cols) = (x.size(), w.size()[2]);
        let (epilogue, aux, aux_ld) = match mask {
            None => (0, std::ptr::null_mut(), 0),
            Some((epilogue, mask)) => (epilogue, mask.bits.data_ptr(), mask.ld),
        };
        // SAFETY: contiguous CUDA tensors of the shapes given (checked by `output`), and a
        // mask of `rows * aux_ld` bits per product; the shim queues the product on the
        // current stream, and the tensors live on in the caller (libtorch's allocator
        // orders their reuse on that stream).
        let status = unsafe {
            ebmlab_lt_bmm(
                device as i32,
                element_kind(x.kind())?,
                epilogue,
                s[0],
                s[1],
                s[2],
                cols,
                x.data_ptr(),
                w.data_ptr(),
                out.data_ptr(),
                aux,
                aux_ld,
            )
        };
        match status {
            0 => Ok(()),
            _ => Err(last_error()),
        }
    }
}

#[cfg(not(ebmlab_cublas_lt))]
mod ffi {
    use anyhow::{bail, Result};
    use tch::Tensor;

    use super::ReluMask;

    pub fn available() -> Result<()> {
        bail!("built without the cuBLASLt shim (libtorch without CUDA, or no CUDA headers)")
    }

    pub fn bmm(_: &Tensor, _: &Tensor, _: &Tensor, _: Option<(i32, &ReluMask)>) -> Result<()> {
        available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(ebmlab_cublas_lt)]
    use crate::policy::Precision;

    /// The shim finds cuBLASLt's functions by name in the process: a misspelt one would
    /// only show on a GPU, as a silent fall back to eager products.
    #[test]
    #[cfg(ebmlab_cublas_lt)]
    fn every_cublaslt_function_is_found_in_this_process() {
        ffi::available().unwrap();
        assert!(available());
    }

    #[test]
    fn products_off_a_gpu_are_refused_with_the_reason() {
        let x = Tensor::ones([2, 3, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([2, 8, 5], (Kind::Float, Device::Cpu));
        let e = bmm_relu(&x, &w).err().expect("refused on the CPU");
        assert!(e.to_string().contains("CUDA device"), "{e}");
        let w = Tensor::ones([2, 7, 5], (Kind::Float, Device::Cpu));
        let e = bmm_relu(&x, &w).err().expect("shapes refused");
        assert!(e.to_string().contains("batched product"), "{e}");
    }

    #[test]
    fn a_mask_has_rows_of_a_multiple_of_128_bits() {
        let mask = ReluMask::new([3, 10, 264], Device::Cpu);
        assert_eq!(mask.ld, 384);
        assert_eq!(mask.bits.size(), [3 * 10 * 384 / 8]);
        assert_eq!(ReluMask::new([1, 4, 128], Device::Cpu).ld, 128);
    }

    /// Elementwise agreement of `got` with `want` (fp32), leaving out the elements whose
    /// mask may flip between kernels: where `pre` (the masked pre-activation) is within
    /// `margin` of zero.
    #[cfg(ebmlab_cublas_lt)]
    fn assert_close(got: &Tensor, want: &Tensor, pre: &Tensor, margin: f64, tol: f64, what: &str) {
        let keep = pre.abs().gt(margin);
        let got = got.to_kind(Kind::Float).masked_select(&keep);
        let want = want.to_kind(Kind::Float).masked_select(&keep);
        let scale = want.abs().max().double_value(&[]).max(1.0);
        let error = (&got - &want).abs().max().double_value(&[]);
        assert!(
            error <= tol * scale,
            "{what}: max error {error:.3e}, scale {scale:.3e}"
        );
    }

    /// On a GPU: both epilogue products against ATen's, elementwise, for packs of one and
    /// more, rows not a multiple of 8 and columns below, at and above a multiple of 128; in
    /// fp32, TF32 and bf16; and replayed from a CUDA graph. Run with `--ignored` where there
    /// is a CUDA device (`bench/gpu.sh` does).
    #[test]
    #[ignore = "needs a CUDA device"]
    #[cfg(ebmlab_cublas_lt)]
    fn on_a_gpu_the_epilogue_products_are_atens_products() {
        assert!(tch::Cuda::is_available(), "no CUDA device");
        let device = Device::Cuda(0);
        let shapes = [
            (1, 37, 16, 40),
            (3, 100, 24, 128),
            (4, 4096, 16, 264),
            (2, 77, 264, 264),
        ];
        for (precision, kind, tol) in [
            (Precision::Fp32, Kind::Float, 1e-4),
            (Precision::Tf32, Kind::Float, 1e-2),
            (Precision::Bf16, Kind::BFloat16, 5e-2),
        ] {
            precision.apply().unwrap();
            for (k, rows, inner, cols) in shapes {
                let what = format!("{precision} K={k} rows={rows} inner={inner} cols={cols}");
                let randn = |s: &[i64]| Tensor::randn(s, (Kind::Float, device)).to_kind(kind);
                let (x, w) = (randn(&[k, rows, inner]), randn(&[k, inner, cols]));
                let (z, w2) = (randn(&[k, rows, cols]), randn(&[k, cols, cols]));
                let h = x.to_kind(Kind::Float).bmm(&w.to_kind(Kind::Float));
                let margin = 0.02 * h.abs().mean(Kind::Float).double_value(&[]);
                let (u, mask) = bmm_relu(&x, &w).unwrap();
                assert_close(&u, &h.relu(), &h, margin, tol, &format!("relu {what}"));
                let masked = bmm_masked(&z, &w2, &mask).unwrap();
                let want = z.to_kind(Kind::Float).bmm(&w2.to_kind(Kind::Float)) * h.gt(0.0);
                assert_close(&masked, &want, &h, margin, tol, &format!("masked {what}"));
                // Replayed from a CUDA graph, on inputs the capture has not seen.
                let f = |t: &[Tensor]| {
                    let (u, mask) = bmm_relu(&t[0], &t[1]).unwrap();
                    Tensor::cat(&[u, bmm_masked(&t[2], &t[3], &mask).unwrap()], 2)
                };
                let (graph, _) = crate::policy::cuda_graph::CapturedFn::capture(
                    &[&x, &w, &z, &w2].map(|t| t.copy()),
                    f,
                )
                .unwrap();
                let fresh = [
                    randn(&[k, rows, inner]),
                    w.copy(),
                    randn(&[k, rows, cols]),
                    w2.copy(),
                ];
                let replayed = graph.run(&fresh).unwrap();
                let eager = f(&fresh);
                let difference = (replayed.to_kind(Kind::Float) - eager.to_kind(Kind::Float))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert_eq!(difference, 0.0, "graph replay {what}");
            }
        }
        Precision::Fp32.apply().unwrap();
    }
}
