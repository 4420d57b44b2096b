// What libtorch offers that tch does not bind: the float32 matmul precision (TF32 on
// NVIDIA tensor cores), as `torch.set_float32_matmul_precision` sets it; pinning host
// memory without naming a device (tch always names one, which libtorch deprecates with a
// warning at every call); device events, to wait for one queued copy rather than for
// everything queued; a product with its bias and ReLU fused, which tch binds wrongly; and
// the optimizer's passes over many tensors at once (`_fused_adam_`, `_foreach_*`).
// Events go through libtorch's device-generic interface, so this file needs no CUDA
// headers.
#include <ATen/Context.h>
#include <ATen/Tensor.h>
#include <ATen/ops/_addmm_activation.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_zero.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/stack.h>
#include <c10/core/Event.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <string>
#include <vector>

// tch's `torch::Tensor*` pointers as tensors (sharing their storage).
static std::vector<at::Tensor> tensors(void** pointers, int64_t n) {
  std::vector<at::Tensor> list;
  list.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    list.push_back(*static_cast<at::Tensor*>(pointers[i]));
  }
  return list;
}

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

// An event recorded on the current stream of `tensor`'s device: it completes once the work
// queued there so far has run. Null where the device has no events (the CPU).
void* ebmlab_event_record(void* tensor) {
  try {
    auto device = static_cast<at::Tensor*>(tensor)->device();
    if (device.is_cpu()) {
      return nullptr;
    }
    auto stream = c10::impl::getDeviceGuardImpl(device.type())->getStream(device);
    auto* event = new c10::Event(device.type());
    try {
      event->record(stream);
    } catch (...) {
      delete event;
      throw;
    }
    return event;
  } catch (...) {
    return nullptr;
  }
}

// Waits for `event` to complete. Returns 0 on success.
int ebmlab_event_wait(void* event) {
  try {
    static_cast<c10::Event*>(event)->synchronize();
    return 0;
  } catch (...) {
    return 1;
  }
}

// Frees `event` without waiting for it.
void ebmlab_event_free(void* event) { delete static_cast<c10::Event*>(event); }

// out = relu(bias + mat1 @ mat2), into `out` (e.g. one member's slice of a stacked
// result); returns 0 on success. On a GPU (where ATen's conditions hold) cuBLASLt adds the
// bias and applies the ReLU in the product's epilogue, with no pass of their own over the
// output. tch's
// `_addmm_activation` passes its `use_gelu` flag as `beta`, so it cannot be used for this.
int ebmlab_addmm_relu_into(void* out, void* bias, void* mat1, void* mat2) {
  try {
    auto& o = *static_cast<at::Tensor*>(out);
    auto& b = *static_cast<at::Tensor*>(bias);
    auto& m1 = *static_cast<at::Tensor*>(mat1);
    auto& m2 = *static_cast<at::Tensor*>(mat2);
    at::_addmm_activation_out(o, b, m1, m2, 1, 1, /*use_gelu=*/false);
    return 0;
  } catch (...) {
    return 1;
  }
}

// One Adam update of `n` parameters in ATen's fused kernel (`torch.optim.Adam(fused=True)`
// without weight decay or amsgrad): a launch or two for all of them on a GPU. `step` is a
// float scalar tensor on their device holding the step count after this update (1 for
// the first), which the kernel reads for the bias corrections. The learning rate is
// `lr_tensor` (a one-element float tensor on their device: what a CUDA graph reads at each
// replay)
// where it is not null, else `lr`. Returns 0 on success.
int ebmlab_fused_adam(void** params, void** grads, void** exp_avgs, void** exp_avg_sqs,
                      int64_t n, void* step, double lr, void* lr_tensor, double beta1,
                      double beta2, double eps) {
  try {
    auto& count = *static_cast<at::Tensor*>(step);
    std::vector<at::Tensor> steps(n, count);
    if (lr_tensor != nullptr) {
      at::_fused_adam_(tensors(params, n), tensors(grads, n), tensors(exp_avgs, n),
                       tensors(exp_avg_sqs, n), /*max_exp_avg_sqs=*/{}, steps,
                       *static_cast<at::Tensor*>(lr_tensor), beta1, beta2,
                       /*weight_decay=*/0.0, eps, /*amsgrad=*/false, /*maximize=*/false);
    } else {
      at::_fused_adam_(tensors(params, n), tensors(grads, n), tensors(exp_avgs, n),
                       tensors(exp_avg_sqs, n), /*max_exp_avg_sqs=*/{}, steps, lr, beta1,
                       beta2, /*weight_decay=*/0.0, eps, /*amsgrad=*/false, /*maximize=*/false);
    }
    return 0;
  } catch (...) {
    return 1;
  }
}

// Zeroes `n` tensors in place (one launch for all of them on a GPU). Returns 0 on success.
int ebmlab_foreach_zero(void** list, int64_t n) {
  try {
    at::_foreach_zero_(tensors(list, n));
    return 0;
  } catch (...) {
    return 1;
  }
}

// The L2 norm of `n` tensors taken together, as a new scalar tensor for tch to own; null if
// libtorch refused.
void* ebmlab_foreach_norm(void** list, int64_t n) {
  try {
    return new at::Tensor(at::stack(at::_foreach_norm(tensors(list, n), 2)).norm());
  } catch (...) {
    return nullptr;
  }
}
}
