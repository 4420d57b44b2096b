// What libtorch offers that tch does not bind: the float32 matmul precision (TF32 on
// NVIDIA tensor cores), as `torch.set_float32_matmul_precision` sets it; and pinning host
// memory without naming a device (tch always names one, which libtorch deprecates with a
// warning at every call).
#include <ATen/Context.h>
#include <ATen/Tensor.h>

#include <string>

extern "C" {

// `precision`: "highest" (IEEE fp32), "high" (TF32), "medium". Returns 0 on success.
int ebmlab_set_float32_matmul_precision(const char* precision) {
  try {
    at::globalContext().setFloat32MatmulPrecision(std::string(precision));
    return 0;
  } catch (...) {
    return 1;
  }
}

// 0: highest, 1: high, 2: medium.
int ebmlab_float32_matmul_precision() {
  switch (at::globalContext().float32MatmulPrecision()) {
    case at::Float32MatmulPrecision::HIGHEST:
      return 0;
    case at::Float32MatmulPrecision::HIGH:
      return 1;
    default:
      return 2;
  }
}

// A pinned copy of the CPU tensor `tensor` (tch's `torch::Tensor*`), as a new tensor for
// tch to own; null if libtorch refused (e.g. no CUDA).
void* ebmlab_pin_memory(void* tensor) {
  try {
    return new at::Tensor(static_cast<at::Tensor*>(tensor)->pin_memory());
  } catch (...) {
    return nullptr;
  }
}
}
