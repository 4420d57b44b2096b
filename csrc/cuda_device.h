// Makes a CUDA device current for a scope (c10's CUDAGuard would reference the CUDA
// runtime, which the binary does not link).
#pragma once

#include <c10/cuda/CUDAFunctions.h>

struct DeviceGuard {
  explicit DeviceGuard(c10::DeviceIndex device) : previous(c10::cuda::current_device()) {
    if (device != previous) {
      c10::cuda::set_device(device);
    }
  }
  ~DeviceGuard() {
    try {
      if (c10::cuda::current_device() != previous) {
        c10::cuda::set_device(previous);
      }
    } catch (...) {
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  c10::DeviceIndex previous;
};
