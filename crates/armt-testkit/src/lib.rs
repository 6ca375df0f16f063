//! Test-only helpers shared by the crates' test suites, so plain `cargo test` works after
//! `scripts/setup` with nothing sourced: the Python env `scripts/setup` made (for reference
//! computations in PyTorch, transformers and TensorBoard) and the transformers references, made
//! on first use by `scripts/make-refs` exactly as `scripts/test` makes them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The checkout's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$ARMT_CACHE`, or `~/.cache/armt` as `scripts/setup` defaults it.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ARMT_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    Path::new(&home).join(".cache/armt")
}

/// The set-up Python (`$ARMT_PYTHON` when given).
pub fn python() -> PathBuf {
    let python = std::env::var_os("ARMT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("venv/bin/python"));
    assert!(
        python.exists(),
        "{} does not exist: run scripts/setup",
        python.display()
    );
    python
}

/// The folder of transformers references (`$ARMT_REFS` when given, else made or reused by
/// `scripts/make-refs`, once per test process).
pub fn refs_dir() -> PathBuf {
    static REFS: OnceLock<PathBuf> = OnceLock::new();
    REFS.get_or_init(|| {
        if let Some(dir) = std::env::var_os("ARMT_REFS") {
            return PathBuf::from(dir);
        }
        let script = repo_root().join("scripts/make-refs");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
    })
    .clone()
}
