//! Compiles the C++ shim (shim/shim.cpp) against libtorch, only when the `tch` feature is on:
//! without it the crate is empty and needs no libtorch.

fn main() {
    println!("cargo:rerun-if-changed=shim");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_TCH");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    let libtorch = std::path::PathBuf::from(
        std::env::var_os("LIBTORCH")
            .expect("the tch feature needs LIBTORCH (eval \"$(scripts/setup-native)\" sets it)"),
    );
    // Same ABI switch torch-sys uses; PyPI wheels since torch 2.7 use the new ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("shim/shim.cpp")
        .file("shim/attention.cpp")
        .file("shim/guided.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .compile("gradcam_tch_shim");
    // The shim calls into libtorch_cpu/libc10 directly; torch-sys links them too, but listing them
    // after the shim keeps `--as-needed` linkers happy whatever order rustc picks.
    println!("cargo:rustc-link-search=native={}", libtorch.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
