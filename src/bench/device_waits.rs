//! How often the host waits for the GPU's queue to drain while it trains: libtorch's sync
//! debug mode, counted (by the shim in `csrc/cuda_graph.cpp`) rather than printed. Each
//! such wait leaves the GPU idle while the host queues the next kernels.

/// `f()`, and how many operations of this thread in it waited for the device's queue to
/// drain; `None` where they cannot be counted (libtorch without CUDA in this build).
pub fn count_device_waits<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    imp::count(f)
}

#[cfg(ebmlab_cuda_graphs)]
mod imp {
    use std::ffi::{c_int, c_long};

    extern "C" {
        fn ebmlab_cuda_waits_count_begin() -> c_int;
        fn ebmlab_cuda_waits_count_end() -> c_long;
    }

    /// Ends the count when dropped, also if the counted work panics (the sync debug mode and
    /// warning handler are put back).
    struct Counting(bool);

    impl Counting {
        fn end(mut self) -> Option<u64> {
            self.0 = false;
            // SAFETY: a plain call; it undoes what `begin` set (also after a failed begin).
            let waits = unsafe { ebmlab_cuda_waits_count_end() };
            (waits >= 0).then_some(waits as u64)
        }
    }

    impl Drop for Counting {
        fn drop(&mut self) {
            if self.0 {
                // SAFETY: as in `end`.
                unsafe { ebmlab_cuda_waits_count_end() };
            }
        }
    }

    pub fn count<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
        // SAFETY: a plain call; `Counting` ends what it begins.
        let began = unsafe { ebmlab_cuda_waits_count_begin() } == 0;
        let counting = Counting(true);
        let value = f();
        let waits = counting.end();
        (value, waits.filter(|_| began))
    }
}

#[cfg(not(ebmlab_cuda_graphs))]
mod imp {
    pub fn count<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
        (f(), None)
    }
}

#[cfg(all(test, ebmlab_cuda_graphs))]
mod tests {
    use super::count_device_waits;

    extern "C" {
        fn ebmlab_cuda_waits_count_example_wait();
    }

    /// What libtorch calls at each wait (a copy to the host, a synchronisation).
    fn wait() {
        // SAFETY: a plain call; it only warns (in sync debug mode "warn").
        unsafe { ebmlab_cuda_waits_count_example_wait() }
    }

    #[test]
    fn the_waits_libtorch_reports_are_counted_and_counting_stops_after() {
        let ((), waits) = count_device_waits(|| {
            wait();
            wait();
        });
        assert_eq!(waits, Some(2));
        // Counting ended: sync debug mode is off again, so this wait is not even reported.
        wait();
        let ((), waits) = count_device_waits(|| {});
        assert_eq!(waits, Some(0));
    }
}
