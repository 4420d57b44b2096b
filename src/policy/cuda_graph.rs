//! CUDA graphs, through the shim in `csrc/cuda_graph.cpp` (tch binds none): a function of
//! tensors captured once and then replayed with new inputs. A Langevin chain is hundreds
//! of small kernels, each launched through libtorch's dispatcher from the host; replayed
//! as a graph, the whole chain is one launch.
//!
//! The rules are PyTorch's: the captured function only queues device work (no copies from
//! the host, no waits for the device, no random draws), and a replay reads and writes the
//! very tensors the capture did, so new inputs are copied into them first.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, ensure, Result};
use tch::{Device, Tensor};

/// Set for good once a capture failed after it began: libtorch's graph state may be left
/// half-done, so this process captures no more.
static CAPTURE_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether this process can capture CUDA graphs: built against libtorch with CUDA, and
/// no capture has failed midway in it.
pub fn available() -> bool {
    cfg!(ebmlab_cuda_graphs) && !CAPTURE_FAILED.load(Ordering::Relaxed)
}

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is capturing a CUDA graph now: nothing that waits for the device (a
/// result read back to the host) may run.
pub fn capturing() -> bool {
    CAPTURING.with(Cell::get)
}

/// `f()` with [`capturing`] true on this thread (false again after, even if `f` panics).
pub(crate) fn as_capture<T>(f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CAPTURING.with(|c| c.set(false));
        }
    }
    CAPTURING.with(|c| c.set(true));
    let _reset = Reset;
    f()
}

/// A function of tensors captured as a CUDA graph.
pub struct CapturedFn {
    graph: ffi::Graph,
    /// The tensors the capture read: each run copies its inputs into them.
    inputs: Vec<Tensor>,
    /// The tensor the capture wrote (in the graph's private memory pool).
    output: Tensor,
}

impl CapturedFn {
    /// Captures `f` on copies of `inputs` (all on one CUDA device). As PyTorch asks, `f`
    /// first runs once eagerly on a side stream (lazy initialisations such as cuBLAS
    /// workspaces must not happen during a capture); that run's output comes back beside.
    pub fn capture(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) -> Result<(Self, Tensor)> {
        let Some(Device::Cuda(device)) = inputs.first().map(Tensor::device) else {
            bail!("CUDA graphs capture work on a CUDA device");
        };
        ensure!(
            inputs.iter().all(|t| t.device() == Device::Cuda(device)),
            "a captured function's inputs are all on one device"
        );
        ensure!(
            available(),
            "no CUDA graphs in this process (built without them, or a capture failed before)"
        );
        let statics: Vec<Tensor> = inputs.iter().map(|t| t.detach().copy()).collect();
        let warm_up = ffi::on_side_stream(device as i32, || guarded(|| f(&statics)))??;
        let graph = ffi::Graph::new()?;
        graph.begin(device as i32)?;
        // The capture must end even if `f` fails, or the stream stays in capture mode.
        let captured = as_capture(|| guarded(|| f(&statics)));
        let ended = graph.end();
        let output = match (captured, ended) {
            (Ok(output), Ok(())) => output,
            (captured, ended) => {
                // A graph whose capture failed is left half-ended by libtorch: never freed.
                CAPTURE_FAILED.store(true, Ordering::Relaxed);
                std::mem::forget(graph);
                let error = captured.err().or(ended.err()).expect("one of them failed");
                return Err(error.context("capturing a CUDA graph"));
            }
        };
        Ok((
            Self {
                graph,
                inputs: statics,
                output,
            },
            warm_up,
        ))
    }

    /// Whether `inputs` have the shapes, element types and device of the captured ones.
    pub fn accepts(&self, inputs: &[Tensor]) -> bool {
        inputs.len() == self.inputs.len()
            && inputs.iter().zip(&self.inputs).all(|(a, b)| {
                a.size() == b.size() && a.kind() == b.kind() && a.device() == b.device()
            })
    }

    /// `f(inputs)`, by copying `inputs` in and replaying the graph; the output is a copy
    /// (the next replay overwrites the captured one).
    pub fn run(&self, inputs: &[Tensor]) -> Result<Tensor> {
        ensure!(
            self.accepts(inputs),
            "inputs of other shapes than the captured function's"
        );
        tch::no_grad(|| {
            for (slot, value) in self.inputs.iter().zip(inputs) {
                slot.shallow_clone().copy_(value);
            }
        });
        self.graph.replay()?;
        Ok(self.output.copy())
    }
}

/// `f()`, with a libtorch panic (tch panics on a failed operation) turned into an error.
fn guarded(f: impl FnOnce() -> Tensor) -> Result<Tensor> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        anyhow::anyhow!("{message}")
    })
}

#[cfg(ebmlab_cuda_graphs)]
mod ffi {
    use std::ffi::{c_int, c_void, CStr};

    use anyhow::{bail, Result};

    extern "C" {
        fn ebmlab_cuda_graph_last_error() -> *const std::ffi::c_char;
        fn ebmlab_cuda_graph_new() -> *mut c_void;
        fn ebmlab_cuda_graph_free(graph: *mut c_void);
        fn ebmlab_cuda_graph_begin(graph: *mut c_void, device: c_int) -> c_int;
        fn ebmlab_cuda_graph_end(graph: *mut c_void) -> c_int;
        fn ebmlab_cuda_graph_replay(graph: *mut c_void) -> c_int;
        fn ebmlab_cuda_side_stream_enter(device: c_int, previous: *mut *mut c_void) -> c_int;
        fn ebmlab_cuda_side_stream_leave(previous: *mut c_void) -> c_int;
    }

    /// The shim's status as a result, with its message on failure.
    fn checked(status: c_int, what: &str) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: the shim returns a NUL-terminated thread-local string.
        let message = unsafe { CStr::from_ptr(ebmlab_cuda_graph_last_error()) };
        bail!("{what}: {}", message.to_string_lossy())
    }

    /// An owned `at::cuda::CUDAGraph`.
    pub struct Graph(*mut c_void);

    impl Graph {
        pub fn new() -> Result<Self> {
            // SAFETY: returns a new graph or null (with the error kept).
            let graph = unsafe { ebmlab_cuda_graph_new() };
            if graph.is_null() {
                checked(1, "creating a CUDA graph")?;
            }
            Ok(Self(graph))
        }

        pub fn begin(&self, device: i32) -> Result<()> {
            // SAFETY: `self.0` is a live graph.
            checked(
                unsafe { ebmlab_cuda_graph_begin(self.0, device) },
                "beginning a CUDA graph capture",
            )
        }

        pub fn end(&self) -> Result<()> {
            // SAFETY: `self.0` is a live graph.
            checked(
                unsafe { ebmlab_cuda_graph_end(self.0) },
                "ending a CUDA graph capture",
            )
        }

        pub fn replay(&self) -> Result<()> {
            // SAFETY: `self.0` is a live graph.
            checked(
                unsafe { ebmlab_cuda_graph_replay(self.0) },
                "replaying a CUDA graph",
            )
        }
    }

    impl Drop for Graph {
        fn drop(&mut self) {
            // SAFETY: `self.0` came from `ebmlab_cuda_graph_new` and is freed once.
            unsafe { ebmlab_cuda_graph_free(self.0) }
        }
    }

    /// `f()` with its work queued on a side stream of `device`, waited for.
    pub fn on_side_stream<T>(device: i32, f: impl FnOnce() -> T) -> Result<T> {
        let mut previous = std::ptr::null_mut();
        // SAFETY: `previous` receives the stream to restore, passed back once to `leave`.
        checked(
            unsafe { ebmlab_cuda_side_stream_enter(device, &mut previous) },
            "switching to a side stream",
        )?;
        let value = f();
        // SAFETY: `previous` from `enter` above.
        checked(
            unsafe { ebmlab_cuda_side_stream_leave(previous) },
            "waiting for the side stream",
        )?;
        Ok(value)
    }
}

/// Without CUDA in libtorch there is nothing to capture: [`available`] is false and
/// [`CapturedFn::capture`] says so before it gets here.
#[cfg(not(ebmlab_cuda_graphs))]
mod ffi {
    use anyhow::{bail, Result};

    pub struct Graph;

    impl Graph {
        pub fn new() -> Result<Self> {
            bail!("no CUDA graphs in this build")
        }
        pub fn begin(&self, _device: i32) -> Result<()> {
            bail!("no CUDA graphs in this build")
        }
        pub fn end(&self) -> Result<()> {
            bail!("no CUDA graphs in this build")
        }
        pub fn replay(&self) -> Result<()> {
            bail!("no CUDA graphs in this build")
        }
    }

    pub fn on_side_stream<T>(_device: i32, _f: impl FnOnce() -> T) -> Result<T> {
        bail!("no CUDA graphs in this build")
    }
}
