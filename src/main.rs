use std::process::ExitCode;

fn main() -> ExitCode {
    keep_freed_tensor_memory();
    ebmlab::cli::main()
}

/// A CPU training step allocates and frees tensors of a few MB every time. With glibc's
/// defaults each of them is a fresh `mmap` (and freed heap is trimmed back to the kernel),
/// so every step pays page faults on zeroed pages: on 2 cores about a tenth of the
/// quickstart's time went to the kernel. Up to 32 MiB, blocks now come from the heap, and
/// up to 1 GiB of freed heap stays in the process. Settings the user gave glibc
/// (`GLIBC_TUNABLES` for malloc) are left alone.
fn keep_freed_tensor_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc"));
        if !user_set {
            // SAFETY: mallopt only changes allocator thresholds; called before any thread.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}
