//! Copies between host and device that do not make the host wait for the device's queue.
//! A plain copy (tch's `to_device`) waits for everything queued before it; during training
//! that leaves the GPU idle while the host prepares the next iteration's kernels.

use std::ffi::c_void;

use tch::{Device, Kind, Tensor};

extern "C" {
    fn ebmlab_pin_memory(tensor: *mut c_void) -> *mut c_void;
    fn ebmlab_event_record(tensor: *mut c_void) -> *mut c_void;
    fn ebmlab_event_wait(event: *mut c_void) -> i32;
    fn ebmlab_event_free(event: *mut c_void);
}

/// `values` on `device`: on a GPU copied from pinned host memory without blocking the
/// host (libtorch keeps the pinned block until the copy has run).
pub fn upload(values: &[f32], device: Device) -> Tensor {
    let host = Tensor::from_slice(values);
    match device {
        Device::Cpu => host,
        _ => pinned(&host)
            .unwrap_or(host)
            .to_device_(device, Kind::Float, true, false),
    }
}

/// A pinned copy of a CPU tensor, if libtorch can pin (it needs CUDA).
fn pinned(host: &Tensor) -> Option<Tensor> {
    // SAFETY: the shim reads the tensor behind tch's pointer and returns a new heap tensor
    // (or null), which `from_ptr` takes ownership of.
    unsafe {
        let pinned = ebmlab_pin_memory(host.as_ptr() as *mut c_void);
        (!pinned.is_null()).then(|| Tensor::from_ptr(pinned as *mut torch_sys::C_tensor))
    }
}

/// Scalars on their way to the host: the copy is queued behind the work that computes
/// them, and only [`PendingScalars::wait`] waits, for that copy alone. Meanwhile the host
/// can queue more work.
pub struct PendingScalars {
    /// On a GPU pinned host memory the copy is still writing until `copied` completes.
    host: Tensor,
    copied: Option<DeviceEvent>,
}

impl PendingScalars {
    /// Queues the copy of `values` (any shape, any float kind) to the host, as f64.
    pub fn queue(values: &Tensor) -> Self {
        let values = values.detach().to_kind(Kind::Double);
        if values.device() == Device::Cpu {
            return Self {
                host: values,
                copied: None,
            };
        }
        // libtorch gives a non-blocking copy to the CPU a pinned destination.
        let host = values.to_device_(Device::Cpu, Kind::Double, true, false);
        match DeviceEvent::record(&values) {
            Some(event) => Self {
                host,
                copied: Some(event),
            },
            // Nothing to wait on later: a plain copy waits now.
            None => Self {
                host: values.to_device(Device::Cpu),
                copied: None,
            },
        }
    }

    /// The values, flattened, once their copy has run.
    pub fn wait(self) -> Vec<f64> {
        if let Some(event) = self.copied {
            assert!(event.wait(), "libtorch failed to wait for a device event");
        }
        Vec::<f64>::try_from(self.host.view([-1])).expect("f64 scalars convert")
    }
}

/// A device event (libtorch's `c10::Event`), recorded on the current stream.
struct DeviceEvent(*mut c_void);

impl DeviceEvent {
    /// Completes once the work queued so far on `tensor`'s device has run; `None` where
    /// the device has no events.
    fn record(tensor: &Tensor) -> Option<Self> {
        // SAFETY: the shim only reads the tensor's device; it returns an owned event or null.
        let event = unsafe { ebmlab_event_record(tensor.as_ptr() as *mut c_void) };
        (!event.is_null()).then_some(Self(event))
    }

    /// Waits for the event; false if libtorch failed to.
    fn wait(self) -> bool {
        // SAFETY: the event came from `ebmlab_event_record` and is live until dropped.
        unsafe { ebmlab_event_wait(self.0) == 0 }
    }
}

impl Drop for DeviceEvent {
    fn drop(&mut self) {
        // SAFETY: the event came from `ebmlab_event_record` and is freed once, here (a step
        // queued but never read frees it without waiting).
        unsafe { ebmlab_event_free(self.0) }
    }
}
