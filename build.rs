//! Makes the binary find libtorch without `LD_LIBRARY_PATH`, and compiles the small C++
//! shim (`csrc/torch_shim.cpp`) for what tch does not bind.
//!
//! torch-sys tells its direct dependents where libtorch lives (`DEP_TCH_LIBTORCH_LIB`).
//! We embed that directory as an rpath, and link with `--no-as-needed` so that
//! `libtorch_cuda` stays a real dependency: without it the linker drops the CUDA
//! library (nothing references it by symbol) and `tch` would only ever see the CPU.

/// Compiles the shim against the headers beside libtorch (`<lib>/../include`), with the
/// same flags torch-sys uses for its own C++.
fn compile_shim(lib_dir: &str) {
    println!("cargo:rerun-if-changed=csrc/torch_shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = std::path::Path::new(lib_dir).join("../include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file("csrc/torch_shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false)
        .compile("ebmlab_torch_shim");
}

fn main() {
    // `sqlx::migrate!` embeds migrations/ at compile time; rebuild when they change.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report a libtorch directory; no rpath embedded");
        return;
    };
    compile_shim(&lib_dir);
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
