//! Stop requests from the outside: Ctrl-C (SIGINT), and SIGTERM and SIGHUP, which is what Slurm,
//! Kubernetes and a closed terminal send before they kill a job. The first one sets one stop
//! flag: the loops finish (or abandon) the current step, save a checkpoint and exit non-zero
//! with a resume hint. A second one exits at once with `_exit`, which skips the C++ static
//! destructors that made `std::process::exit` from a handler thread race libtorch's teardown.
//!
//! The flag is the only stop mechanism, so a multi-rank run can agree on it by all-reducing
//! [`stop_requested`] and calling [`request_stop`] where any rank saw it.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Set by the first signal (or [`request_stop`]); the training loops poll it between phases.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// The signal number that set [`STOP_REQUESTED`] (0 when none did).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signals handled: interrupt, terminate (schedulers' preemption), hang-up.
const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// True once a stop was requested (by a signal or [`request_stop`]).
pub fn stop_requested() -> bool {
    STOP_REQUESTED.load(Ordering::SeqCst)
}

/// Requests a stop as a signal would (for another rank's request, or tests).
pub fn request_stop() {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// The number of the signal that requested the stop, if one did.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// The name of the signal that requested the stop ("SIGTERM", …), or "a stop request" when it
/// did not come from a signal.
pub fn stop_reason() -> &'static str {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        libc::SIGINT => "Ctrl-C (SIGINT)",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a stop request",
    }
}

/// Writes `msg` to stderr with the async-signal-safe `write`.
fn write_stderr(msg: &[u8]) {
    // SAFETY: write(2) on fd 2 with a valid buffer and its length; async-signal-safe.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    if STOP_REQUESTED.swap(true, Ordering::SeqCst) {
        write_stderr(b"\nsecond stop signal: exiting now without a checkpoint\n");
        // SAFETY: _exit is async-signal-safe and runs no destructors or atexit handlers.
        unsafe { libc::_exit(128 + sig) };
    }
    STOP_SIGNAL.store(sig, Ordering::SeqCst);
    let msg: &[u8] = match sig {
        libc::SIGTERM => {
            b"\nSIGTERM: finishing this step, saving a checkpoint, then exiting (signal again to abort)\n"
        }
        libc::SIGHUP => {
            b"\nSIGHUP: finishing this step, saving a checkpoint, then exiting (signal again to abort)\n"
        }
        _ => b"\nCtrl-C: finishing this step, saving a checkpoint, then exiting (Ctrl-C again to abort)\n",
    };
    write_stderr(msg);
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP (once per process).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for sig in HANDLED {
            // SAFETY: a zeroed sigaction with our handler and an empty mask is a valid argument;
            // the handler only touches atomics and calls async-signal-safe functions.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sets_the_flag_and_names_itself() {
        install();
        assert!(!stop_requested());
        // SAFETY: raising a handled signal in our own process.
        unsafe { libc::raise(libc::SIGHUP) };
        assert!(stop_requested());
        assert_eq!(stop_reason(), "SIGHUP");
        STOP_REQUESTED.store(false, Ordering::SeqCst);
        STOP_SIGNAL.store(0, Ordering::SeqCst);
    }
}
