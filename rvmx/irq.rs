// SPDX-License-Identifier: GPL-2.0

//! Interrupts-off sections and rescheduling, from `shim.c`.

extern "C" {
    fn rvmx_local_irq_disable();
    fn rvmx_local_irq_enable();
    fn rvmx_cond_resched();
}

/// Interrupts are off on this CPU while this guard lives, so the task
/// cannot migrate and no interrupt handler runs until it is dropped.
pub(crate) struct IrqsOff(());

impl IrqsOff {
    pub(crate) fn new() -> Self {
        // SAFETY: disabling interrupts is always allowed in process context;
        // `Drop` enables them again.
        unsafe { rvmx_local_irq_disable() };
        Self(())
    }
}

impl Drop for IrqsOff {
    fn drop(&mut self) {
        // SAFETY: `new` disabled them, in process context (the ioctl path),
        // where interrupts were on.
        unsafe { rvmx_local_irq_enable() };
    }
}

/// Lets the scheduler run another task if this one should yield.
pub(crate) fn cond_resched() {
    // SAFETY: called from process context with interrupts on.
    unsafe { rvmx_cond_resched() };
}
