//! One run per run directory: an exclusive `flock` on `RUN/.armt.lock`, held for the life of
//! the process and released by the kernel however it ends (exit, panic, `kill -9`). The file
//! names its holder (pid, host, start time, command line) so a second run can say who has the
//! directory. The holder empties the file when it ends cleanly, so a non-empty file whose lock
//! is free was left by a process that died: it is reported as stale and taken over.
//!
//! The file itself is never removed: removing it would let a third process lock a new file
//! while a second one still holds the old, unlinked one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = ".armt.lock";

#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    #[error("cannot lock run directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "run directory {run_dir} is in use by another armt run ({holder}; lock file {lock}): wait for it to \
         end, stop it, or set another train.run_dir"
    )]
    Held {
        run_dir: PathBuf,
        lock: PathBuf,
        holder: String,
    },
}

/// The held lock; dropping it empties the file and releases the lock.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    /// The holder line of a dead process whose lock this one took over, if any.
    pub stale: Option<String>,
}

/// Who holds (or held) a lock, as written in the file.
fn describe_holder(text: &str) -> String {
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) if text.trim().is_empty() => return "holder not yet recorded".into(),
        Err(_) => return format!("unreadable holder record `{}`", text.trim()),
    };
    format!(
        "pid {} on {}, started {} (unix time), command `{}`",
        v["pid"],
        v["host"].as_str().unwrap_or("?"),
        v["started"],
        v["command"].as_str().unwrap_or("?")
    )
}

/// The pid a record names, when it names a process on this host.
fn holder_pid_here(text: &str) -> Option<u64> {
    let v = serde_json::from_str::<serde_json::Value>(text).ok()?;
    let same_host = v["host"].as_str() == Some(hostname().as_str());
    v["pid"].as_u64().filter(|_| same_host)
}

/// Whether the record names another live process on this host.
fn holder_pid_alive_here(text: &str) -> bool {
    holder_pid_here(text).is_some_and(|pid| pid as u32 != std::process::id() && process_running(pid))
}

/// Whether `pid` is a live process. A killed process stays in /proc as a zombie until its
/// parent reaps it (a launcher killed with it may leave that to init, which can take a while):
/// its state in `/proc/PID/stat` (the field after the parenthesised name) is then `Z` or `X`.
fn process_running(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// How long a lock held with no live holder on record is waited for before it is reported.
const TRANSIENT_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

enum LockAttempt {
    /// Locked; the record left in the file (empty after a clean end).
    Locked(String),
    /// Held by another open file description; its record.
    Held(String),
}

/// Takes the flock, or returns the holder's record. A lock that is held while its record names
/// no live process here is a passing state, so it is retried for up to [`TRANSIENT_HOLD`]: a
/// holder between locking and writing its record, or a released lock whose descriptor a child
/// forked at that moment still shares until it execs (descriptors close on exec, not on fork).
fn lock_or_read_holder(file: &mut File) -> std::io::Result<LockAttempt> {
    let started = std::time::Instant::now();
    loop {
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let err = (rc != 0).then(std::io::Error::last_os_error);
        let mut record = String::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_string(&mut record)?;
        match err {
            None => return Ok(LockAttempt::Locked(record)),
            Some(e) if e.kind() != std::io::ErrorKind::WouldBlock => return Err(e),
            Some(_)
                if holder_pid_here(&record).is_some_and(process_running)
                    || started.elapsed() >= TRANSIENT_HOLD =>
            {
                return Ok(LockAttempt::Held(record));
            }
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

impl RunLock {
    /// Creates `run_dir` if needed and takes its lock, or says who holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self, RunLockError> {
        let path = run_dir.join(LOCK_FILE);
        let io = |source| RunLockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let previous = lock_or_read_holder(&mut file).map_err(io)?;
        let previous = match previous {
            LockAttempt::Locked(previous) => previous,
            LockAttempt::Held(holder_record) => {
                return Err(RunLockError::Held {
                    run_dir: run_dir.to_path_buf(),
                    lock: path,
                    holder: describe_holder(&holder_record),
                });
            }
        };
        // On a file system where flock is not enforced, a live holder on this host still shows.
        if holder_pid_alive_here(&previous) {
            return Err(RunLockError::Held {
                run_dir: run_dir.to_path_buf(),
                lock: path,
                holder: describe_holder(&previous),
            });
        }
        let stale = (!previous.trim().is_empty()).then(|| describe_holder(&previous));
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let record = serde_json::json!({
            "pid": std::process::id(),
            "host": hostname(),
            "started": started,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        });
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(record.to_string().as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self { file, path, stale })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // An empty file marks a clean end; the kernel releases the flock when the file closes.
        let _ = self.file.set_len(0);
    }
}

/// Removes what a crashed run can leave half-written: `checkpoints/.tmp-step-*` directories
/// and the temporary files of metrics and rollout samples. Only safe while holding the lock.
/// Returns what was removed.
pub fn clean_stale_files(run_dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if let Ok(rd) = std::fs::read_dir(run_dir.join("checkpoints")) {
        for e in rd.flatten() {
            let p = e.path();
            let is_tmp = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".tmp-step-"));
            if is_tmp && std::fs::remove_dir_all(&p).is_ok() {
                removed.push(p);
            }
        }
    }
    for f in ["rollouts.jsonl.partial", "metrics.jsonl.tmp"] {
        let p = run_dir.join(f);
        if p.exists() && std::fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// Empties a run directory except its lock file (starting a run over while holding the lock).
pub fn clear_run_dir(run_dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(run_dir)? {
        let e = e?;
        if e.file_name() == LOCK_FILE {
            continue;
        }
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(e.path())?;
        } else {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("armt-run-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_lock_names_the_holder_and_a_dead_holder_is_stale() {
        let dir = scratch("held");
        let lock = RunLock::acquire(&dir).unwrap();
        assert!(lock.stale.is_none());
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("in use"),
            "{err}"
        );
        drop(lock);
        // Released cleanly: the next one is not stale.
        let lock = RunLock::acquire(&dir).unwrap();
        assert!(lock.stale.is_none());
        drop(lock);
        // A record left by a process that no longer exists (pids stay below 2^22 on Linux).
        let dead = r#"{"pid": 4194305, "host": "h", "started": 1, "command": "armt train"}"#;
        std::fs::write(dir.join(LOCK_FILE), dead).unwrap();
        let lock = RunLock::acquire(&dir).unwrap();
        assert!(
            lock.stale.as_deref().unwrap().contains("pid 4194305"),
            "{:?}",
            lock.stale
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A lock still held while its file records nobody (a holder that has not written its
    /// record yet, or a descriptor a forked child shares until exec) is waited for, not refused.
    #[test]
    fn a_lock_held_with_no_record_is_waited_for() {
        let dir = scratch("transient");
        let first = RunLock::acquire(&dir).unwrap();
        first.file.set_len(0).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let started = std::time::Instant::now();
        let second = RunLock::acquire(&dir).unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        assert!(second.stale.is_none());
        release.join().unwrap();
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A killed holder that its parent has not reaped yet (a zombie) holds nothing.
    #[test]
    fn an_unreaped_killed_holder_is_not_running() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as u64;
        assert!(process_running(pid));
        child.kill().unwrap();
        // Not waited for yet: a zombie, still listed in /proc.
        let started = std::time::Instant::now();
        while process_running(pid) && started.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "reaped too early to test"
        );
        assert!(!process_running(pid));
        child.wait().unwrap();
        assert!(!process_running(pid));
    }

    #[test]
    fn stale_temporaries_are_removed_and_clearing_keeps_the_lock() {
        let dir = scratch("clean");
        let lock = RunLock::acquire(&dir).unwrap();
        std::fs::create_dir_all(dir.join("checkpoints/.tmp-step-000004")).unwrap();
        std::fs::create_dir_all(dir.join("checkpoints/step-000002")).unwrap();
        std::fs::write(dir.join("rollouts.jsonl.partial"), "x").unwrap();
        let removed = clean_stale_files(&dir);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(dir.join("checkpoints/step-000002").exists());
        clear_run_dir(&dir).unwrap();
        assert!(dir.join(LOCK_FILE).exists() && !dir.join("checkpoints").exists());
        drop(lock);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
