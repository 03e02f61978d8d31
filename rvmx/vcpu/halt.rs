// SPDX-License-Identifier: GPL-2.0

//! A vCPU that cannot run (HLT, or wait-for-SIPI) sleeps here, inside
//! `RVMX_RUN`, until an event would wake the processor: an interrupt it can
//! take, an NMI, INIT/SIPI, or its local APIC timer; or until the VMM wants
//! the thread back (a signal, `immediate_exit`).
//!
//! Senders post to the mailbox first and wake the thread after, and the
//! thread marks itself sleeping before it looks at the mailbox, so a wake-up
//! between the look and the sleep is never lost.
//!
//! Before sleeping, a halted vCPU polls for a short while (as KVM's halt
//! polling does): a wake-up that comes within it costs no trip through the
//! scheduler. It polls up to `POLL_US`, or until its timer if that is due
//! within `TIMER_POLL_US`, and never while the host wants the CPU.

use crate::{stats::V, vmx::instr};

use super::{entry, Guest, MpState, Vcpu};

extern "C" {
    fn rvmx_prepare_to_sleep();
    fn rvmx_sleep_until(deadline_ns: u64);
    fn rvmx_cancel_sleep();
    fn rvmx_ktime_ns() -> u64;
    fn rvmx_need_resched() -> bool;
}

/// How long a halted vCPU polls for an event before it sleeps.
const POLL_US: u64 = 20;
/// A timer due within this is waited for on the CPU.
const TIMER_POLL_US: u64 = 100;

/// The host TSC ticks in `us` microseconds.
fn tsc_ticks(us: u64) -> u64 {
    // SAFETY: `tsc_khz` is set during boot, before modules load.
    u64::from(unsafe { kernel::bindings::tsc_khz }).saturating_mul(us) / 1000
}

/// Whether the vCPU can run now, after taking what was posted and firing
/// its timer; makes a halted one runnable when an event wakes it.
fn wakes(vcpu: &Vcpu, g: &mut Guest, interrupts_enabled: bool) -> bool {
    entry::fold_posted(vcpu.mailbox(), g);
    entry::run_timer(vcpu, g);
    match g.mp {
        MpState::Runnable => true,
        MpState::Halted if entry::halt_wakes(g, interrupts_enabled) => {
            g.mp = MpState::Runnable;
            true
        }
        _ => false,
    }
}

fn interrupted(vcpu: &Vcpu) -> bool {
    vcpu.run.immediate_exit() || kernel::current!().signal_pending()
}

/// Polls a halted vCPU for up to `POLL_US`, or until a timer due within
/// `TIMER_POLL_US`; `Some` if that ended the halt (or the VMM wants the
/// thread), `None` to go to sleep.
fn poll(vcpu: &Vcpu, g: &mut Guest, interrupts_enabled: bool) -> Option<Woken> {
    if g.mp != MpState::Halted {
        return None;
    }
    let now = instr::rdtsc();
    let mut until = now.saturating_add(tsc_ticks(POLL_US));
    if let Some(d) = g.lapic.timer_deadline() {
        let left = d.saturating_sub(now.wrapping_add(g.tsc_offset));
        if left <= tsc_ticks(TIMER_POLL_US) {
            until = until.max(now.saturating_add(left));
        }
    }
    loop {
        if wakes(vcpu, g, interrupts_enabled) {
            return Some(Woken::Runnable);
        }
        if interrupted(vcpu) {
            return Some(Woken::Interrupted);
        }
        // SAFETY: reading the current task's flag has no preconditions.
        if instr::rdtsc() >= until || unsafe { rvmx_need_resched() } {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// Why the sleep ended.
pub(super) enum Woken {
    /// The vCPU can run.
    Runnable,
    /// The VMM wants the thread back (signal or `immediate_exit`).
    Interrupted,
}

/// Converts a guest TSC deadline to CLOCK_MONOTONIC nanoseconds.
fn tsc_to_ktime(g: &Guest, deadline: u64) -> u64 {
    // SAFETY: `tsc_khz` is set during boot, before modules load.
    let khz = u64::from(unsafe { kernel::bindings::tsc_khz }).max(1);
    let delta = deadline.saturating_sub(g.tsc());
    // In two parts, without 128-bit division (not in the kernel's runtime).
    let ns = (delta / khz)
        .saturating_mul(1_000_000)
        .saturating_add(delta % khz * 1_000_000 / khz);
    // SAFETY: reading the monotonic clock has no preconditions.
    let now = unsafe { rvmx_ktime_ns() };
    now.saturating_add(ns)
}

/// `wait`, with the time it took counted in the vCPU's statistics.
pub(super) fn timed_wait(vcpu: &Vcpu, g: &mut Guest, interrupts_enabled: bool) -> Woken {
    // SAFETY: reading the monotonic clock has no preconditions.
    let start = unsafe { rvmx_ktime_ns() };
    let woken = wait(vcpu, g, interrupts_enabled);
    // SAFETY: as above.
    let ns = unsafe { rvmx_ktime_ns() }.saturating_sub(start);
    vcpu.stats.add(V::HaltNs, ns);
    woken
}

/// Sleeps until the vCPU is runnable or interrupted. `interrupts_enabled`
/// is the guest's RFLAGS.IF at its HLT.
pub(super) fn wait(vcpu: &Vcpu, g: &mut Guest, interrupts_enabled: bool) -> Woken {
    if let Some(woken) = poll(vcpu, g, interrupts_enabled) {
        if matches!(woken, Woken::Runnable) {
            vcpu.stats.inc(V::HaltSuccessfulPoll);
        }
        return woken;
    }
    loop {
        // SAFETY: process context (the RUN ioctl); undone by
        // `rvmx_cancel_sleep` or by the sleep itself.
        unsafe { rvmx_prepare_to_sleep() };
        if wakes(vcpu, g, interrupts_enabled) {
            // SAFETY: undoes `rvmx_prepare_to_sleep` above.
            unsafe { rvmx_cancel_sleep() };
            return Woken::Runnable;
        }
        if interrupted(vcpu) {
            // SAFETY: as above.
            unsafe { rvmx_cancel_sleep() };
            return Woken::Interrupted;
        }
        // A masked or stopped timer does not wake: sleep without deadline.
        let deadline = if g.mp == MpState::Halted {
            g.lapic.timer_deadline().map_or(0, |d| tsc_to_ktime(g, d))
        } else {
            0
        };
        vcpu.stats.inc(V::HaltSleeps);
        // SAFETY: the task is marked sleeping (above); a sender's wake-up
        // or a signal ends the sleep early.
        unsafe { rvmx_sleep_until(deadline) };
    }
}
