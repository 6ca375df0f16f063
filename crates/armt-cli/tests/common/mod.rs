//! Shared by armt-cli's integration tests: the repository root, a fresh work folder holding the
//! red-dot fixture image, and `armt serve` started on a free port and stopped when dropped.
// Each test file uses its own part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `CARGO_TARGET_TMPDIR/NAME`, emptied, with `images/red_dot.png` in it.
pub fn work_dir_with_red_dot(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::copy(
        repo().join("data/images/red_dot.png"),
        dir.join("images/red_dot.png"),
    )
    .unwrap();
    dir
}

/// A running server, stopped when dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `armt serve ARGS` from the repository root (`--port 0`: the server picks a free port)
/// and waits for the line that names its address.
pub fn serve(args: &[&std::ffi::OsStr]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_armt"))
        .current_dir(repo())
        .env("OMP_NUM_THREADS", "1")
        .arg("serve")
        .args(["--port", "0", "--device", "cpu"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("armt serve: listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    Server { child, base }
}
