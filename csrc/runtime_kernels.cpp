// CUDA kernels of our own (csrc/langevin_kernels.cu), compiled at run time by NVRTC for the
// GPU at hand and launched with the CUDA driver API on ATen's current stream (so they are
// ordered with ATen's work and captured into CUDA graphs like it).
//
// Like the cuBLASLt shim, this links no CUDA library: NVRTC is opened where the torch wheel
// keeps it (nvidia/cu13/lib beside torch/lib; else by name), the driver (libcuda.so.1) by
// name. A compiled module is kept per (device, element type, action dimension, width). Compiled
// only where libtorch has CUDA (build.rs); the Rust side falls back to ATen's passes.
#include "cuda_device.h"
#include "find_function.h"
#include "guarded.h"
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda.h>
#include <dirent.h>
#include <dlfcn.h>
#include <nvrtc.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace {

thread_local std::string last_error;

// The directory of the shared object that holds `symbol` ("" if unknown).
std::string directory_of(const void* symbol) {
  Dl_info info{};
  if (dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) {
    return "";
  }
  std::string path = info.dli_fname;
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

// Loads `dir`'s NVRTC builtins library (libnvrtc opens it by name, which the loader would
// not find in a wheel's directory).
void preload_builtins(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) {
    return;
  }
  while (dirent* entry = readdir(d)) {
    std::string name = entry->d_name;
    if (name.rfind("libnvrtc-builtins.so.", 0) == 0 && name.find("alt") == std::string::npos) {
      dlopen((dir + "/" + name).c_str(), RTLD_NOW | RTLD_GLOBAL);
    }
  }
  closedir(d);
}

// NVRTC: from the torch wheel's nvidia packages beside libtorch, else by name.
void* open_nvrtc(std::string& tried) {
  std::string torch_lib = directory_of(reinterpret_cast<const void*>(&c10::cuda::device_count));
  std::vector<std::string> dirs;
  if (!torch_lib.empty()) {
    dirs = {torch_lib + "/../../nvidia/cu13/lib", torch_lib + "/../../nvidia/cuda_nvrtc/lib"};
  }
  for (const auto& dir : dirs) {
    for (const char* name : {"libnvrtc.so.13", "libnvrtc.so.12"}) {
      std::string path = dir + "/" + name;
      tried += path + " ";
      preload_builtins(dir);
      if (void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) {
        return handle;
      }
    }
  }
  for (const char* name : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"}) {
    tried += std::string(name) + " ";
    if (void* handle = dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
      return handle;
    }
  }
  return nullptr;
}

// The NVRTC and driver functions used, found at first use.
struct Api {
  decltype(&nvrtcCreateProgram) create = nullptr;
  decltype(&nvrtcCompileProgram) compile = nullptr;
  decltype(&nvrtcGetProgramLogSize) log_size = nullptr;
  decltype(&nvrtcGetProgramLog) log = nullptr;
  decltype(&nvrtcGetCUBINSize) cubin_size = nullptr;
  decltype(&nvrtcGetCUBIN) cubin = nullptr;
  decltype(&nvrtcDestroyProgram) destroy = nullptr;
  decltype(&cuGetErrorString) error_string = nullptr;
  decltype(&cuDeviceGet) device_get = nullptr;
  decltype(&cuDeviceGetAttribute) attribute = nullptr;
  decltype(&cuCtxGetCurrent) context_current = nullptr;
  decltype(&cuCtxSetCurrent) set_context = nullptr;
  decltype(&cuDevicePrimaryCtxRetain) primary_context = nullptr;
  decltype(&cuModuleUnload) unload = nullptr;
  decltype(&cuModuleLoadData) load = nullptr;
  decltype(&cuModuleGetFunction) function = nullptr;
  decltype(&cuLaunchKernel) launch = nullptr;
  std::string missing_compiler, missing_driver;

  Api() {
    std::string tried;
    if (void* nvrtc = open_nvrtc(tried)) {
      find_function(nvrtc, create, "nvrtcCreateProgram", missing_compiler);
      find_function(nvrtc, compile, "nvrtcCompileProgram", missing_compiler);
      find_function(nvrtc, log_size, "nvrtcGetProgramLogSize", missing_compiler);
      find_function(nvrtc, log, "nvrtcGetProgramLog", missing_compiler);
      find_function(nvrtc, cubin_size, "nvrtcGetCUBINSize", missing_compiler);
      find_function(nvrtc, cubin, "nvrtcGetCUBIN", missing_compiler);
      find_function(nvrtc, destroy, "nvrtcDestroyProgram", missing_compiler);
    } else {
      missing_compiler = "NVRTC (tried " + tried + ")";
    }
    if (void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
      find_function(driver, error_string, "cuGetErrorString", missing_driver);
      find_function(driver, device_get, "cuDeviceGet", missing_driver);
      find_function(driver, attribute, "cuDeviceGetAttribute", missing_driver);
      find_function(driver, context_current, "cuCtxGetCurrent", missing_driver);
      find_function(driver, set_context, "cuCtxSetCurrent", missing_driver);
      find_function(driver, primary_context, "cuDevicePrimaryCtxRetain", missing_driver);
      find_function(driver, unload, "cuModuleUnload", missing_driver);
      find_function(driver, load, "cuModuleLoadData", missing_driver);
      find_function(driver, function, "cuModuleGetFunction", missing_driver);
      find_function(driver, launch, "cuLaunchKernel", missing_driver);
    } else {
      missing_driver = "the CUDA driver (libcuda.so.1)";
    }
  }

};

const Api& api() {
  static const Api functions;
  return functions;
}

void require_compiler() {
  if (!api().missing_compiler.empty()) {
    throw std::runtime_error("not found: " + api().missing_compiler);
  }
}

void check(CUresult result, const char* what) {
  if (result != CUDA_SUCCESS) {
    const char* text = nullptr;
    api().error_string(result, &text);
    throw std::runtime_error(std::string(what) + " failed: " +
                             (text != nullptr ? text : std::to_string(result)));
  }
}

// `source` compiled for sm_<arch> with the element type, action dimension and width defined.
std::vector<char> compile(const char* source, int arch, int bf16, int actions, int width) {
  require_compiler();
  const Api& a = api();
  nvrtcProgram program = nullptr;
  if (a.create(&program, source, "langevin_kernels.cu", 0, nullptr, nullptr) != NVRTC_SUCCESS) {
    throw std::runtime_error("nvrtcCreateProgram failed");
  }
  std::string options[] = {"--gpu-architecture=sm_" + std::to_string(arch),
                           "-DEBMLAB_BF16=" + std::to_string(bf16),
                           "-DACTIONS=" + std::to_string(actions),
                           "-DWIDTH=" + std::to_string(width)};
  const char* pointers[] = {options[0].c_str(), options[1].c_str(), options[2].c_str(),
                            options[3].c_str()};
  nvrtcResult compiled = a.compile(program, 4, pointers);
  std::vector<char> image;
  if (compiled == NVRTC_SUCCESS) {
    size_t size = 0;
    if (a.cubin_size(program, &size) == NVRTC_SUCCESS && size > 0) {
      image.resize(size);
      if (a.cubin(program, image.data()) != NVRTC_SUCCESS) {
        image.clear();
      }
    }
    if (image.empty()) {
      a.destroy(&program);
      throw std::runtime_error("NVRTC compiled the Langevin kernels but gave no CUBIN");
    }
  } else {
    size_t size = 0;
    a.log_size(program, &size);
    std::string log(size, '\0');
    a.log(program, log.data());
    a.destroy(&program);
    throw std::runtime_error("NVRTC could not compile the Langevin kernels for sm_" +
                             std::to_string(arch) + ": " + log);
  }
  a.destroy(&program);
  return image;
}

// Makes `device`'s primary context (the one the CUDA runtime and ATen use) current on this
// thread if no context is: a thread that has made no runtime call yet has none.
void ensure_context(int device) {
  const Api& a = api();
  CUcontext context = nullptr;
  check(a.context_current(&context), "cuCtxGetCurrent");
  if (context == nullptr) {
    CUdevice handle = 0;
    check(a.device_get(&handle, device), "cuDeviceGet");
    check(a.primary_context(&context, handle), "cuDevicePrimaryCtxRetain");
    check(a.set_context(context), "cuCtxSetCurrent");
  }
}

struct Kernels {
  CUfunction heaviside = nullptr;
  CUfunction masked_action_product = nullptr;
  CUfunction langevin_update = nullptr;
};

// The kernels for (device, element type, action dimension, width), compiled and loaded at
// first use into the device's current (primary) context. Modules stay loaded for the
// process.
const Kernels& kernels(const char* source, int device, int bf16, int actions, int width) {
  static std::mutex lock;
  static std::map<std::tuple<int, int, int, int>, Kernels> loaded;
  std::lock_guard<std::mutex> guard(lock);
  auto key = std::make_tuple(device, bf16, actions, width);
  auto found = loaded.find(key);
  if (found != loaded.end()) {
    return found->second;
  }
  if (!api().missing_driver.empty()) {
    throw std::runtime_error("not found: " + api().missing_driver);
  }
  const Api& a = api();
  ensure_context(device);
  CUdevice handle = 0;
  check(a.device_get(&handle, device), "cuDeviceGet");
  int major = 0, minor = 0;
  check(a.attribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle),
        "cuDeviceGetAttribute");
  check(a.attribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle),
        "cuDeviceGetAttribute");
  std::vector<char> image = compile(source, major * 10 + minor, bf16, actions, width);
  CUmodule module = nullptr;
  check(a.load(&module, image.data()), "cuModuleLoadData");
  Kernels k;
  if (a.function(&k.heaviside, module, "heaviside") != CUDA_SUCCESS ||
      a.function(&k.masked_action_product, module, "masked_action_product") != CUDA_SUCCESS ||
      a.function(&k.langevin_update, module, "langevin_update") != CUDA_SUCCESS) {
    a.unload(module);
    throw std::runtime_error("the compiled module lacks the Langevin kernels");
  }
  return loaded.emplace(key, k).first->second;
}

void launch(CUfunction f, int device, unsigned grid_x, unsigned grid_y, unsigned block,
            unsigned shared, void** args) {
  ensure_context(device);
  auto index = static_cast<c10::DeviceIndex>(device);
  auto stream = reinterpret_cast<CUstream>(c10::cuda::getCurrentCUDAStream(index).stream());
  check(api().launch(f, grid_x, grid_y, 1, block, 1, 1, shared, stream, args, nullptr),
        "cuLaunchKernel");
}

// The kernels read and write 16-byte vectors: a misaligned one would be a sticky CUDA
// error that no fallback could recover from.
void require_aligned(const void* pointer) {
  if (reinterpret_cast<uintptr_t>(pointer) % 16 != 0) {
    throw std::invalid_argument("the Langevin kernels' tensors start 16-byte aligned");
  }
}

}  // namespace

extern "C" {

const char* ebmlab_rtc_last_error() { return last_error.c_str(); }

// 0 when NVRTC and the CUDA driver's functions are found, else 1 (what is missing named in
// `ebmlab_rtc_last_error`).
int ebmlab_rtc_available() {
  return guarded(last_error, [] {
    require_compiler();
    if (!api().missing_driver.empty()) {
      throw std::runtime_error("not found: " + api().missing_driver);
    }
  });
}

// Compiles `source` for sm_<arch> without loading it (no GPU needed): its size in bytes in
// `cubin_bytes`.
int ebmlab_rtc_compile(const char* source, int arch, int bf16, int actions, int width,
                       int64_t* cubin_bytes) {
  return guarded(last_error, [&] {
    *cubin_bytes = static_cast<int64_t>(compile(source, arch, bf16, actions, width).size());
  });
}

// `heaviside` over `n` elements at `x` (16-byte aligned) on `device`'s current stream.
int ebmlab_rtc_heaviside(const char* source, int device, int bf16, void* x, int64_t n) {
  return guarded(last_error, [&] {
    require_aligned(x);
    DeviceGuard guard(static_cast<c10::DeviceIndex>(device));
    // Its module's action dimension and width are of no matter to it.
    const Kernels& k = kernels(source, device, bf16, 1, 8);
    long long count = n;
    void* args[] = {&x, &count};
    int64_t vectors = n / (bf16 != 0 ? 8 : 4);
    int64_t blocks = (vectors + 255) / 256;
    blocks = blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks);
    launch(k.heaviside, device, static_cast<unsigned>(blocks), 1, 256, 0, args);
  });
}

// `langevin_update` of `members` chains of `per_member` fp32 elements each (`actions` per
// sample) on `device`'s current stream: a, g, out [members, per_member]; member k's noise at
// noise + k * noise_stride; cg, cn [members]; clip, low, high [members, actions].
int ebmlab_rtc_langevin_update(const char* source, int device, const void* a, const void* g,
                               const void* noise, int64_t noise_stride, const void* cg,
                               const void* cn, const void* clip, const void* low,
                               const void* high, void* out, int64_t members,
                               int64_t per_member, int64_t actions) {
  return guarded(last_error, [&] {
    if (members < 1 || per_member < 1 || actions < 1 || per_member % actions != 0 ||
        actions > (1LL << 30)) {
      throw std::invalid_argument("a Langevin update of " + std::to_string(members) +
                                  " members of " + std::to_string(per_member) +
                                  " elements, " + std::to_string(actions) + " actions each");
    }
    DeviceGuard guard(static_cast<c10::DeviceIndex>(device));
    // fp32 only; the module's element type, action dimension and width are of no matter.
    const Kernels& k = kernels(source, device, 0, 1, 8);
    long long stride = noise_stride, each = per_member, total = members * per_member;
    int width = static_cast<int>(actions);
    void* args[] = {&a, &g, &noise, &stride, &cg, &cn, &clip, &low, &high, &out, &each, &width,
                    &total};
    int64_t blocks = (total + 255) / 256;
    blocks = blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks);
    launch(k.langevin_update, device, static_cast<unsigned>(blocks), 1, 256, 0, args);
  });
}

// `masked_action_product` for p, u [members, rows, width], back [members, width, actions],
// row [members, actions] (fp32) into out [members, rows, actions] (fp32), on `device`'s
// current stream.
int ebmlab_rtc_masked_action_product(const char* source, int device, int bf16, int actions,
                                     const void* p, const void* u, const void* back,
                                     const void* row, void* out, int64_t members,
                                     int64_t rows, int64_t width) {
  return guarded(last_error, [&] {
    require_aligned(p);
    require_aligned(u);
    if (actions < 1 || actions > 32 || width % (bf16 != 0 ? 8 : 4) != 0) {
      throw std::invalid_argument("the masked action product takes 1 to 32 actions and rows of "
                                  "whole 16-byte vectors, not " + std::to_string(actions) +
                                  " actions and width " + std::to_string(width));
    }
    int64_t shared = actions * width * 4;
    if (shared > 48 * 1024) {
      throw std::invalid_argument("the masked action product keeps " +
                                  std::to_string(shared) +
                                  " bytes of weights in shared memory, above 48 KiB");
    }
    if (members > 65535 || rows > (1LL << 30) || width > 65536) {
      throw std::invalid_argument("too many members, rows or columns for one launch");
    }
    DeviceGuard guard(static_cast<c10::DeviceIndex>(device));
    const Kernels& k = kernels(source, device, bf16, actions, static_cast<int>(width));
    int rows32 = static_cast<int>(rows);
    void* args[] = {&p, &u, &back, &row, &out, &rows32};
    // 128 threads take 32 rows (4 lanes a row): many blocks even for a pack of one.
    int64_t blocks = (rows + 31) / 32;
    blocks = blocks < 1 ? 1 : blocks;
    launch(k.masked_action_product, device, static_cast<unsigned>(blocks),
           static_cast<unsigned>(members), 128, static_cast<unsigned>(shared), args);
  });
}
}
