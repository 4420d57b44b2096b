//! How matrix products are computed: IEEE fp32, TF32 on NVIDIA tensor cores, or bf16 (in
//! training a pack's counter-example search in bf16, its loss in fp32 or TF32 products;
//! when acting, the energies' hidden layers in bf16; reductions, softmax, the optimizer's
//! state and master weights stay fp32).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Training: TF32 on a GPU; acting: bf16 on a GPU; fp32 on the CPU for both.
    #[default]
    Auto,
    Fp32,
    /// fp32 tensors, matrix products in TF32 (CUDA; the same as fp32 on the CPU).
    Tf32,
    /// The hidden layers' products in bf16: in training only a pack's counter-example search
    /// (its loss takes fp32 or TF32 products); when acting, the energies.
    Bf16,
}

extern "C" {
    fn ebmlab_set_float32_matmul_precision(precision: *const std::ffi::c_char) -> i32;
    fn ebmlab_float32_matmul_precision() -> i32;
}

impl std::fmt::Display for Precision {
    /// The spec's spelling, as `FromStr` reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    /// The spec's spellings: `auto`, `fp32`, `tf32`, `bf16`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(Precision::Auto),
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(format!("{other:?} is not auto, fp32, tf32 or bf16")),
        }
    }
}

impl Precision {
    pub fn is_auto(&self) -> bool {
        *self == Precision::Auto
    }

    /// What `auto` means for training on `device`: TF32 on a GPU. bf16 searches faster in
    /// big packs, but whether IBC's config keeps its result with bf16 chains is not
    /// measured (a bf16 loss fell short: see the README), so it is asked for, not given.
    pub fn resolve(self, device: Device) -> Self {
        match (self, device) {
            (Precision::Auto, Device::Cpu) => Precision::Fp32,
            (Precision::Auto, _) => Precision::Tf32,
            (other, _) => other,
        }
    }

    /// What `auto` means for acting on `device`: bf16 on a GPU (an argmin over energies
    /// that bf16 ranks as fp32 does, to its rounding).
    pub fn resolve_for_inference(self, device: Device) -> Self {
        match (self, device) {
            (Precision::Auto, Device::Cpu) => Precision::Fp32,
            (Precision::Auto, _) => Precision::Bf16,
            (other, _) => other,
        }
    }

    /// The element type matrix products run in.
    pub fn compute_kind(self) -> Kind {
        match self {
            Precision::Bf16 => Kind::BFloat16,
            _ => Kind::Float,
        }
    }

    /// Tells libtorch whether fp32 matrix products may use TF32 (process-wide: each job
    /// sets it before it computes): with TF32, and with bf16, whose fp32 products (a
    /// training step's loss) take TF32. bf16 products are unaffected.
    pub fn apply(self) -> Result<()> {
        let setting: &std::ffi::CStr = match self {
            Precision::Tf32 | Precision::Bf16 => c"high",
            _ => c"highest",
        };
        // SAFETY: a NUL-terminated string; the shim catches C++ exceptions.
        if unsafe { ebmlab_set_float32_matmul_precision(setting.as_ptr()) } != 0 {
            bail!("libtorch refused float32 matmul precision {setting:?}");
        }
        Ok(())
    }

    /// Whether libtorch currently allows TF32 for fp32 matrix products.
    pub fn tf32_enabled() -> bool {
        // SAFETY: reads a setting of libtorch's global context.
        unsafe { ebmlab_float32_matmul_precision() != 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_tf32_training_and_bf16_acting_on_a_gpu_and_fp32_on_the_cpu() {
        assert_eq!(Precision::Auto.resolve(Device::Cpu), Precision::Fp32);
        assert_eq!(Precision::Auto.resolve(Device::Cuda(0)), Precision::Tf32);
        assert_eq!(
            Precision::Auto.resolve_for_inference(Device::Cpu),
            Precision::Fp32
        );
        assert_eq!(
            Precision::Auto.resolve_for_inference(Device::Cuda(0)),
            Precision::Bf16
        );
        assert_eq!(
            Precision::Fp32.resolve_for_inference(Device::Cuda(0)),
            Precision::Fp32
        );
        assert_eq!(Precision::Tf32.resolve(Device::Cpu), Precision::Tf32);
        for p in [
            Precision::Auto,
            Precision::Fp32,
            Precision::Tf32,
            Precision::Bf16,
        ] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
        }
        Precision::Tf32.apply().unwrap();
        assert!(Precision::tf32_enabled());
        Precision::Fp32.apply().unwrap();
        assert!(!Precision::tf32_enabled());
        // A bf16 training step's fp32 products (its loss) take TF32.
        Precision::Bf16.apply().unwrap();
        assert!(Precision::tf32_enabled());
        Precision::Fp32.apply().unwrap();
        assert!(!Precision::tf32_enabled());
    }
}
