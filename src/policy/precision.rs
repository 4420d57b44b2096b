//! How matrix products are computed: IEEE fp32, TF32 on NVIDIA tensor cores, or bf16
//! (autocast-style: the products in bf16, while reductions, softmax, the loss and the
//! optimizer's state and master weights stay fp32).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 on a GPU, fp32 on the CPU.
    #[default]
    Auto,
    Fp32,
    /// fp32 tensors, matrix products in TF32 (CUDA; the same as fp32 on the CPU).
    Tf32,
    Bf16,
}

extern "C" {
    fn ebmlab_set_float32_matmul_precision(precision: *const std::ffi::c_char) -> i32;
    fn ebmlab_float32_matmul_precision() -> i32;
}

impl Precision {
    pub fn is_auto(&self) -> bool {
        *self == Precision::Auto
    }

    /// What `auto` means on `device`.
    pub fn resolve(self, device: Device) -> Self {
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
    /// sets it before it computes). bf16 products are unaffected.
    pub fn apply(self) -> Result<()> {
        let setting: &std::ffi::CStr = match self {
            Precision::Tf32 => c"high",
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
    fn auto_is_bf16_on_a_gpu_and_fp32_on_the_cpu_and_tf32_reaches_libtorch() {
        assert_eq!(Precision::Auto.resolve(Device::Cpu), Precision::Fp32);
        assert_eq!(Precision::Auto.resolve(Device::Cuda(0)), Precision::Bf16);
        assert_eq!(Precision::Tf32.resolve(Device::Cpu), Precision::Tf32);
        Precision::Tf32.apply().unwrap();
        assert!(Precision::tf32_enabled());
        Precision::Fp32.apply().unwrap();
        assert!(!Precision::tf32_enabled());
    }
}
