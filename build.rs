//! Makes the binary find libtorch without `LD_LIBRARY_PATH`, and compiles the small C++
//! shim (`csrc/torch_shim.cpp`) for what tch does not bind.
//!
//! torch-sys tells its direct dependents where libtorch lives (`DEP_TCH_LIBTORCH_LIB`).
//! We embed that directory as an rpath, and link with `--no-as-needed` so that
//! `libtorch_cuda` stays a real dependency: without it the linker drops the CUDA
//! library (nothing references it by symbol) and `tch` would only ever see the CPU.

/// A C++ build of `file` against the headers beside libtorch (`<lib>/../include`), with the
/// same flags torch-sys uses for its own C++.
fn shim_build(lib_dir: &str, file: &str) -> cc::Build {
    println!("cargo:rerun-if-changed={file}");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = std::path::Path::new(lib_dir).join("../include");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(file)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false);
    build
}

/// Compiles the shim for what tch does not bind.
fn compile_shim(lib_dir: &str) {
    shim_build(lib_dir, "csrc/torch_shim.cpp").compile("ebmlab_torch_shim");
}

/// Where the CUDA runtime's headers are: beside libtorch in the pip wheel's `nvidia/*`
/// packages, or a CUDA toolkit (`CUDA_HOME`, /usr/local/cuda).
fn cuda_include(lib_dir: &str) -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let site = std::path::Path::new(lib_dir).join("../..");
    let wheel = std::fs::read_dir(site.join("nvidia"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("include"));
    let toolkit = std::env::var_os("CUDA_HOME")
        .map(|home| std::path::Path::new(&home).join("include"))
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/local/cuda/include")]);
    // `cuda_runtime.h` (which libtorch's CUDA headers include) needs `crt/`, which the
    // runtime wheel lacks (it is in `nvidia-cuda-crt`).
    wheel.chain(toolkit).find(|dir| {
        let headers = [
            dir.join("cuda_runtime_api.h"),
            dir.join("crt/host_defines.h"),
        ];
        for header in &headers {
            println!("cargo:rerun-if-changed={}", header.display());
        }
        headers.iter().all(|h| h.exists())
    })
}

/// Compiles the CUDA shims where libtorch has CUDA and the CUDA headers are found, and tells
/// the Rust side which compiled: `csrc/cuda_graph.cpp` (`cfg(ebmlab_cuda_graphs)`),
/// `csrc/cublas_lt.cpp` (`cfg(ebmlab_cublas_lt)`) and `csrc/runtime_kernels.cpp`
/// (`cfg(ebmlab_runtime_kernels)`, which compiles `csrc/langevin_kernels.cu` at run time).
/// Elsewhere the Langevin chains run eagerly, with ATen's products.
fn compile_cuda_shims(lib_dir: &str) {
    if !std::path::Path::new(lib_dir)
        .join("libtorch_cuda.so")
        .exists()
    {
        return;
    }
    let Some(cuda) = cuda_include(lib_dir) else {
        println!(
            "cargo:warning=libtorch has CUDA but the CUDA headers (with crt/) were not found: \
             no CUDA graphs (scripts/setup.sh installs them)"
        );
        return;
    };
    for header in [
        "csrc/guarded.h",
        "csrc/cuda_device.h",
        "csrc/find_function.h",
        "csrc/langevin_kernels.cu",
    ] {
        println!("cargo:rerun-if-changed={header}");
    }
    let shims = [
        (
            "csrc/cuda_graph.cpp",
            "ebmlab_cuda_graph",
            "ebmlab_cuda_graphs",
            "CUDA graphs",
        ),
        (
            "csrc/cublas_lt.cpp",
            "ebmlab_cublas_lt",
            "ebmlab_cublas_lt",
            "cuBLASLt epilogues",
        ),
        (
            "csrc/runtime_kernels.cpp",
            "ebmlab_runtime_kernels",
            "ebmlab_runtime_kernels",
            "run-time compiled Langevin kernels",
        ),
    ];
    for (file, library, cfg, what) in shims {
        match shim_build(lib_dir, file)
            .include(&cuda)
            .try_compile(library)
        {
            Ok(()) => println!("cargo:rustc-cfg={cfg}"),
            Err(e) => println!("cargo:warning={file} did not compile ({e}): no {what}"),
        }
    }
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ebmlab_cuda_graphs)");
    println!("cargo::rustc-check-cfg=cfg(ebmlab_cublas_lt)");
    println!("cargo::rustc-check-cfg=cfg(ebmlab_runtime_kernels)");
    // `sqlx::migrate!` embeds migrations/ at compile time; rebuild when they change.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report a libtorch directory; no rpath embedded");
        return;
    };
    compile_shim(&lib_dir);
    compile_cuda_shims(&lib_dir);
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
