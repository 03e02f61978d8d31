//! SIGINT and SIGTERM stop the guest cleanly: the handler records the
//! signal and wakes the main thread, which stops the vCPUs, restores the
//! terminal and exits with 128 + the signal.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::register_signal_handler;

use crate::control::Control;

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(sig: c_int, _: *mut siginfo_t, _: *mut c_void) {
    RECEIVED.store(sig, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) is async-signal-safe; 8 bytes from a valid u64
        // to an eventfd that lives as long as the process's run.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Routes SIGINT and SIGTERM to `control`'s wake-up eventfd.
pub fn install(control: &Control) -> Result<()> {
    WAKE_FD.store(control.wake_fd().as_raw_fd(), Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        register_signal_handler(sig, on_terminate)
            .with_context(|| format!("installing the handler of signal {sig}"))?;
    }
    Ok(())
}

/// The termination signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}
