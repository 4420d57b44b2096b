//! CUDA kernels of our own for a Langevin step (`csrc/langevin_kernels.cu`), compiled at
//! run time by NVRTC for the GPU at hand through the shim in `csrc/runtime_kernels.cpp`:
//!
//! - [`heaviside_`]: a mask in place of a pre-activation in one vectorized pass (ATen's
//!   `gt_` on bf16 runs unvectorized, at ~2.5 times the time of a plain pass);
//! - [`masked_action_product`]: the first layer's mask applied to the backward product and
//!   the product with the action rows, in one read of its two inputs: the masked gradient
//!   `[K, rows, W]` is never written;
//! - [`langevin_update`]: the step's update of the samples in one pass instead of ATen's
//!   five (a small pack's step is a chain of short kernels, each launch a good part of it).
//!
//! CUDA only; elsewhere every call fails and the caller computes with ATen.

use std::sync::OnceLock;

use anyhow::{ensure, Result};
use tch::{Device, Kind, Tensor};

/// The kernels' CUDA source, NUL-terminated for NVRTC.
const SOURCE: &str = concat!(include_str!("../../csrc/langevin_kernels.cu"), "\0");

/// Largest action dimension the masked action product takes (its per-row sums live in
/// registers: 32 covers the N-D study's N = 2..32); above it the caller uses ATen's passes.
pub const MAX_ACTIONS: i64 = 32;

/// Shared memory a block of the masked action product may ask for without opting in.
const SHARED_BYTES: i64 = 48 * 1024;

/// Whether the masked action product takes `actions` actions of a `width`-wide layer: its
/// blocks keep the `[width, actions]` weights (fp32) in shared memory.
pub fn masked_product_fits(actions: i64, width: i64) -> bool {
    (1..=MAX_ACTIONS).contains(&actions) && actions * width * 4 <= SHARED_BYTES
}

/// Whether this process can run the kernels: built with the shim, and NVRTC and the CUDA
/// driver found (the reason is logged once when not).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| match ffi::available() {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("no run-time compiled kernels: {e:#}");
            false
        }
    })
}

/// `x = (x > 0)` as 0 or 1, in place (NaN gives 0, as `gt_`), for a contiguous fp32 or
/// bf16 CUDA tensor.
pub fn heaviside_(x: &Tensor) -> Result<()> {
    let device = cuda_index(x)?;
    ensure!(
        x.is_contiguous() && aligned(x),
        "the heaviside kernel takes a contiguous tensor that starts 16-byte aligned"
    );
    ffi::heaviside(device, is_bf16(x)?, x)
}

/// `Σ_j p[k, r, j] · (u[k, r, j] > 0) · back[k, j, a] + row[k, a]` as `[K, rows, A]` (fp32),
/// for `p` and `u` `[K, rows, W]` and `back` `[K, W, A]` of one element type (fp32 or
/// bf16) and `row` `[K, 1, A]` (fp32), all contiguous on one CUDA device.
pub fn masked_action_product(
    p: &Tensor,
    u: &Tensor,
    back: &Tensor,
    row: &Tensor,
) -> Result<Tensor> {
    let device = cuda_index(p)?;
    let (ps, bs) = (p.size(), back.size());
    ensure!(
        ps.len() == 3 && u.size() == ps && bs.len() == 3 && bs[0] == ps[0] && bs[1] == ps[2],
        "masked action product of {ps:?}, {:?} and {bs:?}",
        u.size()
    );
    let (members, rows, width, actions) = (ps[0], ps[1], ps[2], bs[2]);
    ensure!(
        row.size() == [members, 1, actions] && row.kind() == Kind::Float,
        "the constant row is fp32 [{members}, 1, {actions}], not {:?} {:?}",
        row.kind(),
        row.size()
    );
    ensure!(
        masked_product_fits(actions, width),
        "the masked action product takes 1 to {MAX_ACTIONS} actions whose weights fit \
         {SHARED_BYTES} bytes, not {actions} actions of width {width}"
    );
    let bf16 = is_bf16(p)?;
    ensure!(
        u.kind() == p.kind() && back.kind() == p.kind(),
        "p, u and back of one element type"
    );
    let per_vector = if bf16 { 8 } else { 4 };
    ensure!(
        width % per_vector == 0,
        "the masked action product reads rows of a multiple of {per_vector} elements, not {width}"
    );
    let all = [p, u, back, row];
    ensure!(
        all.iter()
            .all(|t| t.device() == p.device() && t.is_contiguous())
            && aligned(p)
            && aligned(u),
        "the masked action product reads contiguous tensors on one device, p and u 16-byte \
         aligned"
    );
    let out = Tensor::empty([members, rows, actions], (Kind::Float, p.device()));
    ffi::masked_action_product(
        device,
        bf16,
        [p, u, back, row],
        &out,
        [members, rows, width, actions],
    )?;
    Ok(out)
}

/// One Langevin step of K members' chains, as [`crate::policy::ebm`]'s eager update:
/// `clamp(a - clamp(cn·noise + cg·g, ±clip), low, high)` for samples `actions` and gradients
/// `grad` (fp32, contiguous, one shape whose first dimension is K when K > 1), `noise` of
/// that shape (each member's own elements contiguous), and per member `cg`, `cn` (`K`
/// elements each) and `clip`, `low`, `high` (`K × A`, A the last dimension), all fp32 on
/// one CUDA device.
pub fn langevin_update(
    actions: &Tensor,
    grad: &Tensor,
    noise: &Tensor,
    [cg, cn]: [&Tensor; 2],
    [clip, low, high]: [&Tensor; 3],
) -> Result<Tensor> {
    let device = cuda_index(actions)?;
    let shape = actions.size();
    let members = cg.numel() as i64;
    let dims = shape.len();
    ensure!(
        dims >= 1 && grad.size() == shape && noise.size() == shape,
        "a Langevin update of samples {shape:?}, gradients {:?} and noise {:?}",
        grad.size(),
        noise.size()
    );
    let per_action = shape[dims - 1];
    let total = actions.numel() as i64;
    ensure!(
        members >= 1
            && cn.numel() as i64 == members
            && (members == 1 || shape[0] == members)
            && total % members == 0,
        "a Langevin update of {members} members' coefficients for samples {shape:?}"
    );
    let per_member = total / members;
    for (name, t) in [("clip", clip), ("low", low), ("high", high)] {
        ensure!(
            t.numel() as i64 == members * per_action,
            "the update's {name} holds {} values, not {members} x {per_action}",
            t.numel()
        );
    }
    let all = [actions, grad, noise, cg, cn, clip, low, high];
    ensure!(
        all.iter()
            .all(|t| t.kind() == Kind::Float && t.device() == actions.device()),
        "the Langevin update takes fp32 tensors on one device"
    );
    let (first, noise_stride) = match members {
        1 => (noise.shallow_clone(), 0),
        _ => (noise.get(0), noise.stride()[0]),
    };
    ensure!(
        [actions, grad, cg, cn, clip, low, high]
            .iter()
            .all(|t| t.is_contiguous())
            && first.is_contiguous(),
        "the Langevin update reads contiguous tensors (each member's noise contiguous)"
    );
    let out = Tensor::empty(shape.as_slice(), (Kind::Float, actions.device()));
    ffi::langevin_update(
        device,
        [actions, grad, noise, cg, cn, clip, low, high],
        &out,
        [noise_stride, members, per_member, per_action],
    )?;
    Ok(out)
}

fn cuda_index(t: &Tensor) -> Result<i32> {
    match t.device() {
        Device::Cuda(index) => Ok(index as i32),
        other => anyhow::bail!("run-time compiled kernels run on a CUDA device, not {other:?}"),
    }
}

fn is_bf16(t: &Tensor) -> Result<bool> {
    match t.kind() {
        Kind::BFloat16 => Ok(true),
        Kind::Float => Ok(false),
        other => anyhow::bail!("run-time compiled kernels take fp32 or bf16, not {other:?}"),
    }
}

fn aligned(t: &Tensor) -> bool {
    t.data_ptr() as usize % 16 == 0
}

#[cfg(ebmlab_runtime_kernels)]
mod ffi {
    use std::ffi::{c_char, c_void, CStr};

    use anyhow::{anyhow, Result};
    use tch::Tensor;

    use super::SOURCE;

    extern "C" {
        fn ebmlab_rtc_last_error() -> *const c_char;
        fn ebmlab_rtc_available() -> i32;
        #[cfg(test)]
        fn ebmlab_rtc_compile(
            source: *const c_char,
            arch: i32,
            bf16: i32,
            actions: i32,
            width: i32,
            cubin_bytes: *mut i64,
        ) -> i32;
        fn ebmlab_rtc_heaviside(
            source: *const c_char,
            device: i32,
            bf16: i32,
            x: *mut c_void,
            n: i64,
        ) -> i32;
        fn ebmlab_rtc_langevin_update(
            source: *const c_char,
            device: i32,
            a: *const c_void,
            g: *const c_void,
            noise: *const c_void,
            noise_stride: i64,
            cg: *const c_void,
            cn: *const c_void,
            clip: *const c_void,
            low: *const c_void,
            high: *const c_void,
            out: *mut c_void,
            members: i64,
            per_member: i64,
            actions: i64,
        ) -> i32;
        fn ebmlab_rtc_masked_action_product(
            source: *const c_char,
            device: i32,
            bf16: i32,
            actions: i32,
            p: *const c_void,
            u: *const c_void,
            back: *const c_void,
            row: *const c_void,
            out: *mut c_void,
            members: i64,
            rows: i64,
            width: i64,
        ) -> i32;
    }

    fn status(code: i32) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: the shim returns a NUL-terminated string owned by this thread.
        let text = unsafe { CStr::from_ptr(ebmlab_rtc_last_error()) };
        Err(anyhow!("{}", text.to_string_lossy()))
    }

    fn source() -> *const c_char {
        SOURCE.as_ptr().cast()
    }

    pub fn available() -> Result<()> {
        // SAFETY: looks up libraries and functions by name; no arguments.
        status(unsafe { ebmlab_rtc_available() })
    }

    /// The size of the kernels' CUBIN for sm_`arch` (compiled, not loaded: no GPU needed),
    /// for `actions` and hidden `width`.
    #[cfg(test)]
    pub fn compile(arch: i32, bf16: bool, actions: i32, width: i32) -> Result<i64> {
        let mut bytes = 0;
        // SAFETY: a NUL-terminated source and an out-pointer to a live i64.
        status(unsafe {
            ebmlab_rtc_compile(source(), arch, i32::from(bf16), actions, width, &mut bytes)
        })?;
        Ok(bytes)
    }

    pub fn heaviside(device: i32, bf16: bool, x: &Tensor) -> Result<()> {
        // SAFETY: a contiguous, aligned CUDA tensor of x.numel() elements of the kind named
        // (checked by the caller); the kernel is queued on the current stream and the
        // tensor lives on in the caller (libtorch's allocator orders reuse on that stream).
        status(unsafe {
            ebmlab_rtc_heaviside(
                source(),
                device,
                i32::from(bf16),
                x.data_ptr(),
                x.numel() as i64,
            )
        })
    }

    pub fn langevin_update(
        device: i32,
        [a, g, noise, cg, cn, clip, low, high]: [&Tensor; 8],
        out: &Tensor,
        [noise_stride, members, per_member, actions]: [i64; 4],
    ) -> Result<()> {
        // SAFETY: fp32 CUDA tensors of the sizes given, contiguous (noise per member, at
        // its stride; checked by the caller); queued on the current stream, the tensors
        // live on in the caller.
        status(unsafe {
            ebmlab_rtc_langevin_update(
                source(),
                device,
                a.data_ptr(),
                g.data_ptr(),
                noise.data_ptr(),
                noise_stride,
                cg.data_ptr(),
                cn.data_ptr(),
                clip.data_ptr(),
                low.data_ptr(),
                high.data_ptr(),
                out.data_ptr(),
                members,
                per_member,
                actions,
            )
        })
    }

    pub fn masked_action_product(
        device: i32,
        bf16: bool,
        [p, u, back, row]: [&Tensor; 4],
        out: &Tensor,
        [members, rows, width, actions]: [i64; 4],
    ) -> Result<()> {
        // SAFETY: contiguous, aligned CUDA tensors of the shapes given (checked by the
        // caller); queued on the current stream, the tensors live on in the caller.
        status(unsafe {
            ebmlab_rtc_masked_action_product(
                source(),
                device,
                i32::from(bf16),
                actions as i32,
                p.data_ptr(),
                u.data_ptr(),
                back.data_ptr(),
                row.data_ptr(),
                out.data_ptr(),
                members,
                rows,
                width,
            )
        })
    }
}

#[cfg(not(ebmlab_runtime_kernels))]
mod ffi {
    use anyhow::{bail, Result};
    use tch::Tensor;

    pub fn available() -> Result<()> {
        bail!("built without the run-time kernel shim (libtorch without CUDA, or no CUDA headers)")
    }

    pub fn heaviside(_: i32, _: bool, _: &Tensor) -> Result<()> {
        available()
    }

    pub fn masked_action_product(
        _: i32,
        _: bool,
        _: [&Tensor; 4],
        _: &Tensor,
        _: [i64; 4],
    ) -> Result<()> {
        available()
    }

    pub fn langevin_update(_: i32, _: [&Tensor; 8], _: &Tensor, _: [i64; 4]) -> Result<()> {
        available()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels compile with NVRTC for the GPUs in use (no GPU needed to compile): a
    /// syntax or type error would otherwise show only on a GPU, as a silent fall back.
    #[test]
    #[cfg(ebmlab_runtime_kernels)]
    fn the_kernels_compile_for_hopper_and_ampere_in_both_element_types() {
        for arch in [80, 90] {
            for bf16 in [false, true] {
                for (actions, width) in [(1, 40), (2, 264), (8, 520), (MAX_ACTIONS as i32, 264)] {
                    let bytes = ffi::compile(arch, bf16, actions, width).unwrap_or_else(|e| {
                        panic!("sm_{arch} bf16 {bf16} A={actions} W={width}: {e:#}")
                    });
                    assert!(bytes > 1000, "a CUBIN of {bytes} bytes");
                }
            }
        }
    }

    #[test]
    fn off_a_gpu_the_kernels_are_refused_with_the_reason() {
        let x = Tensor::ones([2, 3, 8], (Kind::Float, Device::Cpu));
        let e = heaviside_(&x).expect_err("refused on the CPU");
        assert!(e.to_string().contains("CUDA device"), "{e}");
        let back = Tensor::ones([2, 8, 2], (Kind::Float, Device::Cpu));
        let row = Tensor::ones([2, 1, 2], (Kind::Float, Device::Cpu));
        let e = masked_action_product(&x, &x, &back, &row).expect_err("refused");
        assert!(e.to_string().contains("CUDA device"), "{e}");
        let (a, coef, table) = (
            Tensor::ones([2, 4, 3], (Kind::Float, Device::Cpu)),
            Tensor::ones([2], (Kind::Float, Device::Cpu)),
            Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
        );
        let e = langevin_update(&a, &a, &a, [&coef, &coef], [&table, &table, &table])
            .expect_err("refused");
        assert!(e.to_string().contains("CUDA device"), "{e}");
    }

    /// ATen's update of Langevin samples (as `langevin.rs` computes it eagerly).
    fn eager_update(
        a: &Tensor,
        g: &Tensor,
        noise: &Tensor,
        [cg, cn]: [&Tensor; 2],
        [clip, low, high]: [&Tensor; 3],
    ) -> Tensor {
        let delta = (noise * cn)
            .addcmul(g, cg)
            .clamp_tensor(Some(&-clip), Some(clip));
        (a - delta).clamp_tensor(Some(low), Some(high))
    }

    /// On a GPU: the update kernel against ATen's passes for a pack whose noise is a slice
    /// of all steps' draws (member stride) and for a single chain (scalar coefficients,
    /// `[A]` tables), with samples pushed past the bounds and moves past the clip, a NaN
    /// kept as ATen keeps it, and replayed from a CUDA graph on unseen inputs.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_the_update_kernel_computes_what_aten_computes() {
        assert!(tch::Cuda::is_available(), "no CUDA device");
        assert!(available(), "no run-time kernels in this build");
        let device = Device::Cuda(0);
        let opts = (Kind::Float, device);
        for (k, b, n, a) in [(3, 512, 8, 2), (1, 100, 512, 16), (4, 7, 3, 5)] {
            let what = format!("K={k} B={b} N={n} A={a}");
            let packed = k > 1;
            let shape: Vec<i64> = if packed {
                vec![k, b, n, a]
            } else {
                vec![b, n, a]
            };
            let table_shape: Vec<i64> = if packed { vec![k, 1, 1, a] } else { vec![a] };
            let coef_shape: Vec<i64> = if packed { vec![k, 1, 1, 1] } else { vec![] };
            let actions = Tensor::randn(shape.as_slice(), opts) * 1.5;
            let g = Tensor::randn(shape.as_slice(), opts) * 3.0;
            let all_noise = Tensor::randn([k, 5, b, n, a], opts);
            let noise = if packed {
                all_noise.select(1, 2)
            } else {
                all_noise.get(0).get(2)
            };
            let cg = Tensor::rand(coef_shape.as_slice(), opts) * 0.1;
            let cn = Tensor::rand(coef_shape.as_slice(), opts) * 0.1;
            let clip = Tensor::rand(table_shape.as_slice(), opts) * 0.2 + 0.01;
            let low = -Tensor::rand(table_shape.as_slice(), opts) - 0.5;
            let high = Tensor::rand(table_shape.as_slice(), opts) + 0.5;
            let flat = |t: &Tensor| t.reshape([-1, a]).contiguous();
            let tables = [flat(&clip), flat(&low), flat(&high)];
            let tables = [&tables[0], &tables[1], &tables[2]];
            let _ = actions.view([-1]).get(5).fill_(f64::NAN);
            let want = eager_update(&actions, &g, &noise, [&cg, &cn], [&clip, &low, &high]);
            let got = langevin_update(&actions, &g, &noise, [&cg, &cn], tables).unwrap();
            assert!(
                got.view([-1]).get(5).isnan().int64_value(&[]) == 1,
                "NaN {what}"
            );
            let finite = want.isfinite();
            let error = (&got - &want)
                .masked_select(&finite)
                .abs()
                .max()
                .double_value(&[]);
            assert!(error <= 1e-6, "update {what}: {error:.3e}");
            let f =
                |t: &[Tensor]| langevin_update(&t[0], &t[1], &t[2], [&cg, &cn], tables).unwrap();
            let inputs = [actions.copy(), g.copy(), noise.contiguous()];
            let (graph, _) = crate::policy::cuda_graph::CapturedFn::capture(&inputs, f).unwrap();
            let fresh = [
                Tensor::randn(shape.as_slice(), opts),
                Tensor::randn(shape.as_slice(), opts),
                Tensor::randn(shape.as_slice(), opts),
            ];
            assert!(graph.run(&fresh).unwrap().equal(&f(&fresh)), "graph {what}");
        }
    }

    /// On a GPU: both kernels against ATen, for packs of one and more, rows that do not fill
    /// a block, widths of 40 and 264, action dimensions 1 to 32, in fp32 and bf16; and
    /// replayed from a CUDA graph on inputs the capture has not seen. Run with `--ignored`
    /// where there is a CUDA device (`bench/gpu.sh` does).
    #[test]
    #[ignore = "needs a CUDA device"]
    fn on_a_gpu_the_kernels_compute_what_aten_computes() {
        assert!(tch::Cuda::is_available(), "no CUDA device");
        assert!(available(), "no run-time kernels in this build");
        let device = Device::Cuda(0);
        for kind in [Kind::Float, Kind::BFloat16] {
            // A tensor whose elements are not whole vectors: the heaviside's scalar tail.
            let odd = Tensor::randn([3, 7, 5], (Kind::Float, device)).to_kind(kind);
            let want = odd.gt(0.0).to_kind(kind);
            heaviside_(&odd).unwrap();
            assert!(odd.equal(&want), "heaviside {kind:?} of 105 elements");
            let mut shapes = vec![
                (1, 37, 40, 2),
                (3, 300, 264, 1),
                (2, 4096, 264, 8),
                (4, 65, 40, 5),
                (3, 1000, 264, 16),
                (2, 300, 264, 32),
            ];
            if kind == Kind::Float {
                // Rows of whole fp32 vectors (4 elements) but not of bf16 ones (8).
                shapes.push((2, 50, 108, 3));
            }
            for (k, rows, width, actions) in shapes {
                let what = format!("{kind:?} K={k} rows={rows} W={width} A={actions}");
                let randn = |s: &[i64]| Tensor::randn(s, (Kind::Float, device)).to_kind(kind);
                let z = randn(&[k, rows, width]);
                let want = z.gt(0.0).to_kind(kind);
                heaviside_(&z).unwrap();
                assert!(z.equal(&want), "heaviside {what}");
                let (p, u, back) = (
                    randn(&[k, rows, width]),
                    randn(&[k, rows, width]),
                    randn(&[k, width, actions]),
                );
                let row = Tensor::randn([k, 1, actions], (Kind::Float, device));
                let f32 = |t: &Tensor| t.to_kind(Kind::Float);
                let want = (f32(&p) * u.gt(0.0)).bmm(&f32(&back)) + &row;
                let got = masked_action_product(&p, &u, &back, &row).unwrap();
                // fp32 sums in another order: ~1e-6 of the terms' magnitude.
                let scale = (f32(&p).abs().bmm(&f32(&back).abs()))
                    .max()
                    .double_value(&[]);
                let error = (&got - &want).abs().max().double_value(&[]);
                assert!(
                    error <= 1e-5 * scale,
                    "masked action product {what}: {error:.3e} of {scale:.3e}"
                );
                let f = |t: &[Tensor]| {
                    let z = t[0].copy();
                    heaviside_(&z).unwrap();
                    Tensor::cat(
                        &[
                            masked_action_product(&z, &t[1], &t[2], &t[3]).unwrap(),
                            z.to_kind(Kind::Float).sum_dim_intlist(2, true, Kind::Float),
                        ],
                        2,
                    )
                };
                let inputs = [randn(&[k, rows, width]), u.copy(), back.copy(), row.copy()];
                let (graph, _) =
                    crate::policy::cuda_graph::CapturedFn::capture(&inputs, f).unwrap();
                let fresh = [
                    randn(&[k, rows, width]),
                    randn(&[k, rows, width]),
                    back.copy(),
                    row.copy(),
                ];
                let replayed = graph.run(&fresh).unwrap();
                assert!(replayed.equal(&f(&fresh)), "graph replay {what}");
            }
        }
    }
}
