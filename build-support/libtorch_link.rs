// Shared by the build scripts of crates whose binaries or tests link libtorch (included with
// `include!`). Two things make `armt` run with nothing exported by the user:
// - an rpath to the libtorch that torch-sys built against (torch-sys passes it to us as
//   DEP_TCH_LIBTORCH_LIB), and to armt's cache lib dir (the libnccl.so link cudarc dlopens);
// - libtorch_cuda linked with --no-as-needed: no symbol of it is referenced directly, so with
//   the default --as-needed the binary would load only libtorch_cpu and never see the GPU.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=ARMT_CACHE");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    // torch-sys sees libtorch through the checkout's `.armt/libtorch` link: the rpath names the
    // real directory, so the binary keeps working when it is copied out of the checkout.
    let lib = std::fs::canonicalize(&lib).map_or(lib, |p| p.display().to_string());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    let cache = std::env::var("ARMT_CACHE")
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|home| format!("{home}/.cache/armt")));
    if let Some(cache) = cache {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{cache}/lib");
    }
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
