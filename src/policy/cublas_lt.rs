//! Batched products with a ReLU epilogue (cuBLASLt's `RELU`), through the shim in
//! `csrc/cublas_lt.cpp` (ATen offers epilogues only for unbatched products). The Langevin
//! gradient uses it to drop its ReLU pass over `[K, rows, width]` tensors. CUDA only;
//! elsewhere every call fails and the caller computes eagerly.

use std::sync::OnceLock;

use anyhow::{bail, ensure, Result};
use tch::{Device, Kind, Tensor};

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

/// `relu(x @ w)` `[K, rows, cols]` for `x` `[K, rows, inner]` and `w` `[K, inner, cols]`.
pub fn bmm_relu(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let out = output(x, w)?;
    ffi::bmm(x, w, &out, true)?;
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

    use super::element_kind;

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

    /// `out = x @ w`, or `relu(x @ w)`.
    pub fn bmm(x: &Tensor, w: &Tensor, out: &Tensor, relu: bool) -> Result<()> {
        let Device::Cuda(device) = x.device() else {
            unreachable!("checked by the caller");
        };
        let (s, cols) = (x.size(), w.size()[2]);
        // SAFETY: contiguous CUDA tensors of the shapes given (checked by `output`); the shim
        // queues the product on the current stream, and the tensors live on in the caller (libtorch's allocator
        // orders their reuse on that stream).
        let status = unsafe {
            ebmlab_lt_bmm(
                device as i32,
                element_kind(x.kind())?,
                i32::from(relu),
                s[0],
                s[1],
                s[2],
                cols,
                x.data_ptr(),
                w.data_ptr(),
                out.data_ptr(),
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

    pub fn available() -> Result<()> {
        bail!("built without the cuBLASLt shim (libtorch without CUDA, or no CUDA headers)")
    }

    pub fn bmm(_: &Tensor, _: &Tensor, _: &Tensor, _: bool) -> Result<()> {
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
        let e = bmm_relu(&x, &w).expect_err("refused on the CPU");
        assert!(e.to_string().contains("CUDA device"), "{e}");
        let w = Tensor::ones([2, 7, 5], (Kind::Float, Device::Cpu));
        let e = bmm_relu(&x, &w).expect_err("shapes refused");
        assert!(e.to_string().contains("batched product"), "{e}");
    }

    /// On a GPU: the ReLU product against ATen's, elementwise (leaving out elements within
    /// 2% of the mean magnitude from zero, whose sign other roundings may flip), for packs of
    /// one and more, rows not a multiple of 8, columns below, at and above a multiple of 128;
    /// in fp32, TF32 and bf16; and replayed from a CUDA graph. Run with `--ignored` where
    /// there is a CUDA device (`bench/gpu.sh` does).
    #[test]
    #[ignore = "needs a CUDA device"]
    #[cfg(ebmlab_cublas_lt)]
    fn on_a_gpu_the_relu_product_is_atens_product() {
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
                let h = x.to_kind(Kind::Float).bmm(&w.to_kind(Kind::Float));
                let keep = h
                    .abs()
                    .gt(0.02 * h.abs().mean(Kind::Float).double_value(&[]));
                let got = bmm_relu(&x, &w).unwrap().to_kind(Kind::Float);
                let want = h.relu();
                let scale = want.abs().max().double_value(&[]).max(1.0);
                let error = (got.masked_select(&keep) - want.masked_select(&keep))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(
                    error <= tol * scale,
                    "{what}: max error {error:.3e}, scale {scale:.3e}"
                );
                // Replayed from a CUDA graph, on inputs the capture has not seen.
                let f = |t: &[Tensor]| bmm_relu(&t[0], &t[1]).unwrap();
                let (graph, _) =
                    crate::policy::cuda_graph::CapturedFn::capture(&[&x, &w].map(|t| t.copy()), f)
                        .unwrap();
                let fresh = [randn(&[k, rows, inner]), w.copy()];
                let replayed = graph.run(&fresh).unwrap();
                let difference = (replayed.to_kind(Kind::Float) - f(&fresh).to_kind(Kind::Float))
                    .abs()
                    .max()
                    .double_value(&[]);
                assert_eq!(difference, 0.0, "graph replay {what}");
            }
        }
        Precision::Fp32.apply().unwrap();
    }
}
