//! Lets a binary built with `--features tch` start as built: the libtorch it was linked against
//! (`$LIBTORCH/lib`) goes into its run path, so no `LD_LIBRARY_PATH` is needed, whichever
//! backend the run then uses.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_TCH");
    // src/backend/ort.rs reads it with option_env!.
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        if matches!(target_os.as_str(), "linux" | "macos" | "freebsd") {
            // Every target of this package (the command, its tests) links libtorch.
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        }
    }
}
