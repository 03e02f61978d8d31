//! How a VM run ends: the first outcome reported wins, wakes the main
//! thread, and decides vmmctl's exit status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest reset the machine (i8042 pulse-reset command).
    Reboot,
    /// The guest wrote `code` to the debug-exit port.
    DebugExit(u32),
    /// The user typed the console escape (Ctrl-A x).
    UserQuit,
    /// SIGINT or SIGTERM reached vmmctl.
    Signal(i32),
    /// The guest kernel reported a panic on its console.
    GuestPanic,
    /// The guest triple-faulted.
    TripleFault,
    /// The hypervisor or a vCPU failed; the message says how.
    Error(String),
}

impl Outcome {
    /// vmmctl's exit status: 0 for an orderly end, QEMU's (code << 1) | 1
    /// for the debug-exit port (always odd), even codes for guest crashes,
    /// 128 + signal as shells report it.
    pub fn exit_status(&self) -> u8 {
        match self {
            Outcome::PowerOff | Outcome::Reboot | Outcome::UserQuit => 0,
            Outcome::DebugExit(code) => ((code << 1) | 1) as u8,
            Outcome::Error(_) => 1,
            Outcome::GuestPanic => 2,
            Outcome::TripleFault => 4,
            Outcome::Signal(sig) => 128u8.wrapping_add(*sig as u8),
        }
    }

    /// The line vmmctl prints on stderr when it stops, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::PowerOff | Outcome::Reboot | Outcome::UserQuit => None,
            Outcome::DebugExit(code) => Some(format!(
                "guest wrote {code:#x} to the debug-exit port: exit status {}",
                self.exit_status()
            )),
            Outcome::Signal(sig) => Some(format!("stopped by signal {sig}")),
            Outcome::GuestPanic => Some("the guest kernel panicked (see its console)".into()),
            Outcome::TripleFault => {
                Some("the guest triple-faulted (the hypervisor reported a shutdown)".into())
            }
            Outcome::Error(e) => Some(e.clone()),
        }
    }
}

/// Shared by every thread of a run.
pub struct Control {
    outcome: Mutex<Option<Outcome>>,
    stopping: AtomicBool,
    wake: EventFd,
}

impl Control {
    pub fn new() -> Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            stopping: AtomicBool::new(false),
            wake: EventFd::new(libc::EFD_CLOEXEC).context("eventfd")?,
        })
    }

    /// Records `outcome` unless one is already recorded, then wakes the
    /// main thread.
    pub fn finish(&self, outcome: Outcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // Nothing can be done if the eventfd write fails (it cannot for a
        // counter far from overflow); the vCPUs see `stopping` anyway.
        let _ = self.wake.write(1);
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The eventfd the main thread sleeps on; signal handlers write to it.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// The recorded outcome, if any.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outcome_wins() {
        let c = Control::new().unwrap();
        assert!(!c.stopping());
        c.finish(Outcome::Reboot);
        c.finish(Outcome::GuestPanic);
        assert!(c.stopping());
        assert_eq!(c.outcome(), Some(Outcome::Reboot));
        assert_eq!(c.wake_fd().read().unwrap(), 2);
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(Outcome::PowerOff.exit_status(), 0);
        assert_eq!(Outcome::Reboot.exit_status(), 0);
        assert_eq!(Outcome::DebugExit(0x21).exit_status(), 0x43);
        assert_eq!(Outcome::DebugExit(0).exit_status(), 1);
        assert_eq!(Outcome::GuestPanic.exit_status(), 2);
        assert_eq!(Outcome::Signal(libc::SIGTERM).exit_status(), 143);
        assert_eq!(Outcome::Error("x".into()).exit_status(), 1);
    }
}
