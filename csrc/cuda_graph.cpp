// CUDA graphs for tch, which binds none: PyTorch's `torch.cuda.graph` as five C calls;
// and a count of the host's waits for the device (for the bench). Compiled only where
// libtorch has CUDA (build.rs); the Rust side falls back to eager.
//
// As in PyTorch, work is captured from the thread's current stream: `begin` makes a
// side stream current and starts capturing, the caller then issues its tensor operations
// (through tch, on this thread), and `end` stops capturing and restores the stream. A
// replay launches the captured kernels on the current stream, reading and writing the
// very tensors the capture used (the caller keeps them alive and copies new inputs in).
#include "guarded.h"
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <exception>
#include <optional>
#include <string>

namespace {

thread_local std::string last_error;

struct Graph {
  at::cuda::CUDAGraph graph;
  // The stream that was current before `begin`, restored by `end`.
  std::optional<c10::cuda::CUDAStream> previous;
  c10::DeviceIndex device = 0;
};

// Waits for the device's queued work and makes a side stream of `device` current on this
// thread; returns the stream that was current.
c10::cuda::CUDAStream switch_to_side_stream(int device) {
  auto index = static_cast<c10::DeviceIndex>(device);
  c10::cuda::set_device(index);
  c10::cuda::device_synchronize();
  auto previous = c10::cuda::getCurrentCUDAStream(index);
  c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(false, index));
  return previous;
}

// Counts libtorch's "called a synchronizing CUDA operation" warnings (its sync debug mode
// "warn") and passes every other warning on to the handler it replaced.
class WaitCounter : public c10::WarningHandler {
 public:
  WaitCounter(c10::WarningHandler* next, c10::cuda::SyncDebugMode mode)
      : next(next), previous_mode(mode) {}
  void process(const c10::Warning& warning) override {
    if (warning.msg().find("synchronizing CUDA operation") != std::string::npos) {
      ++waits;
    } else {
      next->process(warning);
    }
  }
  c10::WarningHandler* next;
  c10::cuda::SyncDebugMode previous_mode;
  long waits = 0;
};

thread_local WaitCounter* wait_counter = nullptr;

}  // namespace

extern "C" {

// The message of the last failed call on this thread.
const char* ebmlab_cuda_graph_last_error() { return last_error.c_str(); }

void* ebmlab_cuda_graph_new() {
  Graph* graph = nullptr;
  guarded(last_error, [&] { graph = new Graph(); });
  return graph;
}

void ebmlab_cuda_graph_free(void* graph) { delete static_cast<Graph*>(graph); }

// Waits for the device's queued work, makes a side stream of `device` current and begins
// capturing it (PyTorch's defaults: a private memory pool, global capture mode).
int ebmlab_cuda_graph_begin(void* graph, int device) {
  auto* g = static_cast<Graph*>(graph);
  return guarded(last_error, [&] {
    g->device = static_cast<c10::DeviceIndex>(device);
    g->previous = switch_to_side_stream(device);
    try {
      g->graph.capture_begin();
    } catch (...) {
      c10::cuda::setCurrentCUDAStream(*g->previous);
      g->previous.reset();
      throw;
    }
  });
}

// Ends the capture (an invalidated capture fails here) and restores the stream, always.
// After a failed end the graph must never be freed (the caller leaks it): PyTorch left it
// half-ended. Its memory pools stop taking this device's allocations here (PyTorch ends
// that only after a successful end); each call fails harmlessly if it had ended already.
int ebmlab_cuda_graph_end(void* graph) {
  auto* g = static_cast<Graph*>(graph);
  int status = guarded(last_error, [&] { g->graph.capture_end(); });
  if (status != 0) {
    auto pool = g->graph.pool();
    try {
      c10::cuda::CUDACachingAllocator::endAllocateToPool(g->device, pool);
    } catch (...) {
    }
    try {
      at::getHostAllocator(at::kCUDA)->end_allocate_to_pool(pool);
    } catch (...) {
    }
  }
  if (g->previous) {
    c10::cuda::setCurrentCUDAStream(*g->previous);
    g->previous.reset();
  }
  return status;
}

// Launches the captured work on the current stream.
int ebmlab_cuda_graph_replay(void* graph) {
  auto* g = static_cast<Graph*>(graph);
  return guarded(last_error, [&] { g->graph.replay(); });
}

// Runs the next operations of this thread on a side stream of `device` (for the warm-up
// PyTorch asks for before a capture), after the device's queued work; `leave` waits for
// them and restores the stream.
int ebmlab_cuda_side_stream_enter(int device, void** previous) {
  return guarded(last_error, [&] { *previous = new c10::cuda::CUDAStream(switch_to_side_stream(device)); });
}

int ebmlab_cuda_side_stream_leave(void* previous) {
  auto* stream = static_cast<c10::cuda::CUDAStream*>(previous);
  int status = guarded(last_error, [&] { c10::cuda::getCurrentCUDAStream(stream->device_index()).synchronize(); });
  c10::cuda::setCurrentCUDAStream(*stream);
  delete stream;
  return status;
}

// Starts counting the operations of this thread that wait for the device's queue to drain
// (a copy to the host, a stream or device synchronisation); event waits are not counted.
// libtorch's sync debug mode is process-wide: other threads' waits meanwhile are printed.
int ebmlab_cuda_waits_count_begin() {
  return guarded(last_error, [] {
    if (wait_counter == nullptr) {
      auto mode = c10::cuda::warning_state().get_sync_debug_mode();
      wait_counter = new WaitCounter(c10::WarningUtils::get_warning_handler(), mode);
      c10::WarningUtils::set_warning_handler(wait_counter);
    }
    wait_counter->waits = 0;
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
  });
}

// Stops counting and puts back the mode and handler `begin` found; the waits since `begin`,
// or -1 if none began.
long ebmlab_cuda_waits_count_end() {
  if (wait_counter == nullptr) {
    return -1;
  }
  c10::cuda::warning_state().set_sync_debug_mode(wait_counter->previous_mode);
  c10::WarningUtils::set_warning_handler(wait_counter->next);
  long waits = wait_counter->waits;
  delete wait_counter;
  wait_counter = nullptr;
  return waits;
}

// What libtorch does at each wait for the device (for a test of the count without a GPU;
// in sync debug mode "warn" it only warns).
void ebmlab_cuda_waits_count_example_wait() { c10::cuda::warn_or_error_on_sync(); }
}
