// Batched matrix products with a ReLU epilogue, which ATen does not offer for batches
// (cuBLASLt's RELU: writes relu(D)). It lets the Langevin gradient skip the ReLU's pass over
// its biggest tensors.
//
// cuBLASLt is reached through the handle and workspace ATen keeps for the current stream,
// and its functions are looked up at run time in the process (libtorch_cuda loads
// libcublasLt), so the binary links no CUDA library of its own. Compiled only where
// libtorch has CUDA (build.rs); the Rust side falls back to eager products elsewhere.
#include "cuda_device.h"
#include "find_function.h"
#include "guarded.h"
#include <ATen/Context.h>
#include <c10/cuda/CUDAStream.h>
#include <dlfcn.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

// The part of cuBLASLt's API used here (cublasLt.h of CUDA 12 and 13), declared here:
// cublasLt.h includes cuda_fp16.h, which needs CCCL headers the pip wheels lack.
struct cublasLtContext;
using cublasLtHandle_t = cublasLtContext*;

namespace lt_api {
using Status = int;  // cublasStatus_t
constexpr Status kSuccess = 0;
using Desc = void*;    // cublasLtMatmulDesc_t
using Layout = void*;  // cublasLtMatrixLayout_t
using Pref = void*;    // cublasLtMatmulPreference_t
struct Algo {          // cublasLtMatmulAlgo_t
  uint64_t data[8];
};
struct HeuristicResult {  // cublasLtMatmulHeuristicResult_t
  Algo algo;
  size_t workspace_size;
  Status state;
  float waves_count;
  int reserved[4];
};
// cublasComputeType_t and cudaDataType_t
constexpr int kCompute32F = 68, kCompute32FFastTF32 = 77;
constexpr int kR32F = 0, kR16BF = 14;
// cublasLtMatrixLayoutAttribute_t
constexpr int kLayoutBatchCount = 5, kLayoutStridedBatchOffset = 6;
// cublasLtMatmulDescAttributes_t
constexpr int kDescEpilogue = 7;
// cublasLtMatmulPreferenceAttributes_t
constexpr int kPrefMaxWorkspaceBytes = 1;
// cublasLtEpilogue_t
constexpr uint32_t kEpilogueDefault = 1, kEpilogueRelu = 2;

using DescCreate = Status (*)(Desc*, int compute, int scale);
using DescDestroy = Status (*)(Desc);
using DescSet = Status (*)(Desc, int attr, const void* buf, size_t size);
using LayoutCreate = Status (*)(Layout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
using LayoutDestroy = Status (*)(Layout);
using LayoutSet = Status (*)(Layout, int attr, const void* buf, size_t size);
using PrefCreate = Status (*)(Pref*);
using PrefDestroy = Status (*)(Pref);
using PrefSet = Status (*)(Pref, int attr, const void* buf, size_t size);
using Heuristic = Status (*)(cublasLtHandle_t, Desc, Layout a, Layout b, Layout c, Layout d,
                             Pref, int requested, HeuristicResult* results, int* returned);
using Matmul = Status (*)(cublasLtHandle_t, Desc, const void* alpha, const void* a, Layout,
                          const void* b, Layout, const void* beta, const void* c, Layout,
                          void* d, Layout, const Algo*, void* workspace, size_t workspace_size,
                          cudaStream_t stream);
}  // namespace lt_api

// ATen's cuBLASLt handle and workspace for the current stream (declared here, as its
// header also pulls in CUDA headers the pip wheels lack).
namespace at::cuda {
cublasLtHandle_t getCurrentCUDABlasLtHandle();
void* getCUDABlasLtWorkspace();
size_t getCUDABlasLtWorkspaceSize();
}  // namespace at::cuda

namespace {

thread_local std::string last_error;

// The cuBLASLt functions used, found in the process by name.
struct Lt {
  lt_api::DescCreate desc_create = nullptr;
  lt_api::DescDestroy desc_destroy = nullptr;
  lt_api::DescSet desc_set = nullptr;
  lt_api::LayoutCreate layout_create = nullptr;
  lt_api::LayoutDestroy layout_destroy = nullptr;
  lt_api::LayoutSet layout_set = nullptr;
  lt_api::PrefCreate pref_create = nullptr;
  lt_api::PrefDestroy pref_destroy = nullptr;
  lt_api::PrefSet pref_set = nullptr;
  lt_api::Heuristic heuristic = nullptr;
  lt_api::Matmul matmul = nullptr;
  std::string missing;

  Lt() {
    find(desc_create, "cublasLtMatmulDescCreate");
    find(desc_destroy, "cublasLtMatmulDescDestroy");
    find(desc_set, "cublasLtMatmulDescSetAttribute");
    find(layout_create, "cublasLtMatrixLayoutCreate");
    find(layout_destroy, "cublasLtMatrixLayoutDestroy");
    find(layout_set, "cublasLtMatrixLayoutSetAttribute");
    find(pref_create, "cublasLtMatmulPreferenceCreate");
    find(pref_destroy, "cublasLtMatmulPreferenceDestroy");
    find(pref_set, "cublasLtMatmulPreferenceSetAttribute");
    find(heuristic, "cublasLtMatmulAlgoGetHeuristic");
    find(matmul, "cublasLtMatmul");
  }

  template <typename T>
  void find(T& slot, const char* name) {
    find_function(RTLD_DEFAULT, slot, name, missing);
  }
};

const Lt& lt() {
  static const Lt functions;
  return functions;
}

void check(lt_api::Status status, const char* what) {
  if (status != lt_api::kSuccess) {
    throw std::runtime_error(std::string(what) + " failed: cuBLAS status " +
                             std::to_string(status));
  }
}

// Element types: 0 fp32, 1 fp32 with TF32 products, 2 bf16. Callers name 0 or 2; fp32
// products use TF32 where ATen's own would (`allowTF32CuBLAS`).
struct Types {
  int data;
  int compute;
};

Types types(int kind) {
  switch (kind) {
    case 0:
      return {lt_api::kR32F, lt_api::kCompute32F};
    case 1:
      return {lt_api::kR32F, lt_api::kCompute32FFastTF32};
    case 2:
      return {lt_api::kR16BF, lt_api::kCompute32F};
    default:
      throw std::invalid_argument("unknown element kind " + std::to_string(kind));
  }
}

// One product's descriptors and chosen algorithm, kept for every later call of its shape.
struct Plan {
  lt_api::Desc desc = nullptr;
  lt_api::Layout a = nullptr, b = nullptr, d = nullptr;
  lt_api::Algo algo{};
};

void destroy(const Plan& p) {
  if (p.a != nullptr) lt().layout_destroy(p.a);
  if (p.b != nullptr) lt().layout_destroy(p.b);
  if (p.d != nullptr) lt().layout_destroy(p.d);
  if (p.desc != nullptr) lt().desc_destroy(p.desc);
}

lt_api::Layout layout(int type, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                      int64_t stride) {
  lt_api::Layout l = nullptr;
  check(lt().layout_create(&l, type, rows, cols, ld), "cublasLtMatrixLayoutCreate");
  int32_t count = static_cast<int32_t>(batch);
  lt_api::Status status = lt().layout_set(l, lt_api::kLayoutBatchCount, &count, sizeof(count));
  if (status == lt_api::kSuccess) {
    status = lt().layout_set(l, lt_api::kLayoutStridedBatchOffset, &stride, sizeof(stride));
  }
  if (status != lt_api::kSuccess) {
    lt().layout_destroy(l);
  }
  check(status, "setting the batch count and stride");
  return l;
}

// What one call of a product is given.
struct Product {
  int device, kind, epilogue;  // epilogue: 0 none, 1 RELU
  int64_t m, n, k, batch;      // column-major D[m, n] = A[m, k] B[k, n], every operand packed
};

// A plan for `q`, or none where cuBLASLt has no algorithm for it.
bool try_plan(const Product& q, cublasLtHandle_t handle, size_t workspace, Plan& p) {
  Types t = types(q.kind);
  uint32_t epilogue = q.epilogue == 1 ? lt_api::kEpilogueRelu : lt_api::kEpilogueDefault;
  p = Plan{};
  try {
    check(lt().desc_create(&p.desc, t.compute, lt_api::kR32F), "cublasLtMatmulDescCreate");
    check(lt().desc_set(p.desc, lt_api::kDescEpilogue, &epilogue, sizeof(epilogue)),
          "setting the epilogue");
    p.a = layout(t.data, q.m, q.k, q.m, q.batch, q.m * q.k);
    p.b = layout(t.data, q.k, q.n, q.k, q.batch, q.k * q.n);
    p.d = layout(t.data, q.m, q.n, q.m, q.batch, q.m * q.n);
    lt_api::Pref pref = nullptr;
    check(lt().pref_create(&pref), "cublasLtMatmulPreferenceCreate");
    uint64_t bytes = workspace;
    lt_api::Status status =
        lt().pref_set(pref, lt_api::kPrefMaxWorkspaceBytes, &bytes, sizeof(bytes));
    lt_api::HeuristicResult result{};
    int found = 0;
    if (status == lt_api::kSuccess) {
      status = lt().heuristic(handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, &result, &found);
    }
    lt().pref_destroy(pref);
    if (status != lt_api::kSuccess || found == 0 || result.state != lt_api::kSuccess ||
        result.workspace_size > workspace) {
      destroy(p);
      return false;
    }
    p.algo = result.algo;
    return true;
  } catch (...) {
    destroy(p);
    throw;
  }
}

using Key = std::tuple<int, int, int, int64_t, int64_t, int64_t, int64_t, size_t>;

// The plan of `q`, made at its shape's first call (per thread, as ATen's handles are).
const Plan& plan(const Product& q, cublasLtHandle_t handle, size_t workspace) {
  thread_local std::map<Key, Plan> plans;
  Key key{q.device, q.kind, q.epilogue, q.m, q.n, q.k, q.batch, workspace};
  auto found = plans.find(key);
  if (found != plans.end()) {
    return found->second;
  }
  Plan p;
  if (!try_plan(q, handle, workspace, p)) {
    throw std::runtime_error(
        "cuBLASLt has no algorithm for this product (epilogue " + std::to_string(q.epilogue) +
        ", kind " + std::to_string(q.kind) + ", m " + std::to_string(q.m) + ", n " +
        std::to_string(q.n) + ", k " + std::to_string(q.k) + ", batch " +
        std::to_string(q.batch) + ")");
  }
  return plans.emplace(key, p).first->second;
}

}  // namespace

extern "C" {

const char* ebmlab_lt_last_error() { return last_error.c_str(); }

// 1 when every cuBLASLt function is found in the process, else 0 (the first missing one
// named in `ebmlab_lt_last_error`).
int ebmlab_lt_available() {
  if (!lt().missing.empty()) {
    last_error = "cuBLASLt function not found in this process: " + lt().missing;
    return 0;
  }
  return 1;
}

// Row-major `out[b] = x[b] @ w[b]` for x [batch, rows, inner], w [batch, inner, cols], out
// [batch, rows, cols], all contiguous and 256-byte aligned (cuBLASLt's heuristic assumes
// so) on CUDA device `device`, on its current stream; `kind` 0 (fp32) or 2 (bf16);
// `epilogue` 0 (none) or 1 (ReLU: relu(out) is stored). As column-major matrices that is
// out^T = w^T x^T: cuBLASLt's A = w, B = x, D = out, with m = cols, n = rows, k = inner.
int ebmlab_lt_bmm(int device, int kind, int epilogue, int64_t batch, int64_t rows,
                  int64_t inner, int64_t cols, const void* x, const void* w, void* out) {
  return guarded(last_error, [&] {
    if (ebmlab_lt_available() == 0) {
      throw std::runtime_error(last_error);
    }
    for (const void* pointer : {x, w, static_cast<const void*>(out)}) {
      if (reinterpret_cast<uintptr_t>(pointer) % 256 != 0) {
        throw std::invalid_argument("cuBLASLt operands here are 256-byte aligned");
      }
    }
    if (epilogue != 0 && epilogue != 1) {
      throw std::invalid_argument("epilogue " + std::to_string(epilogue) + " is not 0 or 1");
    }
    if (kind != 0 && kind != 2) {
      throw std::invalid_argument("element kind " + std::to_string(kind) + " is not 0 or 2");
    }
    if (kind == 0 && at::globalContext().allowTF32CuBLAS()) {
      kind = 1;
    }
    Product q{device, kind, epilogue, cols, rows, inner, batch};
    auto index = static_cast<c10::DeviceIndex>(device);
    DeviceGuard guard(index);
    cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
    void* workspace = at::cuda::getCUDABlasLtWorkspace();
    size_t workspace_bytes = at::cuda::getCUDABlasLtWorkspaceSize();
    const Plan& p = plan(q, handle, workspace_bytes);
    float alpha = 1.0f, beta = 0.0f;
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(index).stream();
    check(lt().matmul(handle, p.desc, &alpha, w, p.a, x, p.b, &beta, out, p.d, out, p.d,
                      &p.algo, workspace, workspace_bytes, stream),
          "cublasLtMatmul");
  });
}
}
