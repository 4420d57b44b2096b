//! Makes the binary find libtorch without `LD_LIBRARY_PATH`.
//!
//! torch-sys tells its direct dependents where libtorch lives (`DEP_TCH_LIBTORCH_LIB`).
//! We embed that directory as an rpath, and link with `--no-as-needed` so that
//! `libtorch_cuda` stays a real dependency: without it the linker drops the CUDA
//! library (nothing references it by symbol) and `tch` would only ever see the CPU.

fn main() {
    // `sqlx::migrate!` embeds migrations/ at compile time; rebuild when they change.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report a libtorch directory; no rpath embedded");
        return;
    };
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        for lib in ["torch_cpu", "torch_cuda", "c10_cuda", "torch"] {
            if std::path::Path::new(&lib_dir)
                .join(format!("lib{lib}.so"))
                .exists()
            {
                println!("cargo:rustc-link-arg=-l{lib}");
            }
        }
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
