// SPDX-License-Identifier: GPL-2.0

//! What other threads hand a vCPU: interrupts, NMIs, INIT and SIPI, posted
//! without its run lock (the sender may be another vCPU inside its own VMX
//! window, with interrupts off, or the VMM's MSI ioctl).
//!
//! Posting sets bits with atomic operations, then wakes the vCPU's thread
//! if it sleeps in HLT and kicks it (a reschedule IPI to its CPU) if it is
//! in guest mode there: the IPI makes it exit, and the pre-entry step
//! (`entry`) folds the mailbox into its local APIC before the next entry.
//! The mailbox also mirrors what destination matching needs of the local
//! APIC, which only the owning thread may touch.

use kernel::{
    new_spinlock,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{Acquire, Atomic, Full, Relaxed, Release},
        Arc, SpinLock,
    },
    task::Task,
};

use crate::lapic::{delivery::Target, Vectors};

/// Sets `bit` of `word` (the kernel's atomics have no fetch_or).
fn set_bit(word: &Atomic<u32>, bit: u32) {
    let mut old = word.load(Relaxed);
    while let Err(now) = word.cmpxchg(old, old | (1 << bit), Full) {
        old = now;
    }
}

/// SIPI vector valid flag in `Mailbox::sipi`.
const SIPI_VALID: u32 = 1 << 8;

#[pin_data]
pub(crate) struct Mailbox {
    /// Fixed vectors posted (a bit per vector), and which of them are
    /// level-triggered.
    irr: [Atomic<u32>; 8],
    tmr: [Atomic<u32>; 8],
    nmi: Atomic<bool>,
    init: Atomic<bool>,
    /// The last SIPI's vector with `SIPI_VALID`, 0 when none.
    sipi: Atomic<u32>,
    /// The vCPU exists (its fd was created and not yet released).
    present: Atomic<bool>,
    /// The CPU whose VMX window runs this vCPU, -1 when none: where a
    /// change of the VM's memory must interrupt.
    window_cpu: Atomic<i32>,
    /// The local APIC's destination state: LDR (31:0), flat model (32),
    /// x2APIC mode (33), enabled (34). The id is the vCPU id.
    target: Atomic<u64>,
    /// The thread in `RVMX_RUN` on this vCPU, to wake and kick. The lock is
    /// taken by senders, in any context but hard-IRQ, for as long as a wake
    /// and a kick take, so the task cannot go away under them.
    #[pin]
    task: SpinLock<Option<ARef<Task>>>,
}

/// What `Mailbox::take` found.
pub(crate) struct Posted {
    pub(crate) irr: Vectors,
    pub(crate) tmr: Vectors,
    pub(crate) nmi: bool,
    pub(crate) init: bool,
    pub(crate) sipi: Option<u8>,
}

impl Mailbox {
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                irr: [const { Atomic::new(0) }; 8],
                tmr: [const { Atomic::new(0) }; 8],
                nmi: Atomic::new(false),
                init: Atomic::new(false),
                sipi: Atomic::new(0),
                present: Atomic::new(false),
                window_cpu: Atomic::new(-1),
                target: Atomic::new(0),
                task <- new_spinlock!(None),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    pub(crate) fn set_present(&self, present: bool) {
        self.present.store(present, Release);
    }

    pub(crate) fn present(&self) -> bool {
        self.present.load(Acquire)
    }

    /// The vCPU's window opens on `cpu`. Ordered before the window reads
    /// the VM's EPT generation: a memory change either sees the window
    /// here (and interrupts it) or is seen by the window (which flushes).
    pub(crate) fn window_opens(&self, cpu: u32) {
        let _ = self.window_cpu.xchg(cpu as i32, Full);
    }

    pub(crate) fn window_closes(&self) {
        self.window_cpu.store(-1, Release);
    }

    pub(crate) fn window_cpu(&self) -> Option<u32> {
        u32::try_from(self.window_cpu.load(Acquire)).ok()
    }

    /// The owner publishes its local APIC's destination state.
    pub(crate) fn publish_target(&self, t: &Target) {
        let packed = u64::from(t.ldr)
            | (u64::from(t.flat) << 32)
            | (u64::from(t.x2apic) << 33)
            | (u64::from(t.enabled) << 34);
        self.target.store(packed, Release);
    }

    /// The local APIC's destination state for vCPU `id`.
    pub(crate) fn target(&self, id: u32) -> Target {
        let packed = self.target.load(Acquire);
        Target {
            id,
            ldr: packed as u32,
            flat: packed & (1 << 32) != 0,
            x2apic: packed & (1 << 33) != 0,
            enabled: packed & (1 << 34) != 0,
        }
    }

    /// Posts fixed interrupt `vector`.
    pub(crate) fn post_fixed(&self, vector: u8, level_triggered: bool) {
        let (word, bit) = (usize::from(vector >> 5), u32::from(vector & 31));
        if level_triggered {
            set_bit(&self.tmr[word], bit);
        }
        set_bit(&self.irr[word], bit);
        self.kick();
    }

    pub(crate) fn post_nmi(&self) {
        self.nmi.store(true, Release);
        self.kick();
    }

    pub(crate) fn post_init(&self) {
        self.init.store(true, Release);
        self.kick();
    }

    pub(crate) fn post_sipi(&self, vector: u8) {
        self.sipi.store(SIPI_VALID | u32::from(vector), Release);
        self.kick();
    }

    /// Whether anything is posted (cheap check before `take`).
    pub(crate) fn has_posted(&self) -> bool {
        self.nmi.load(Acquire)
            || self.init.load(Acquire)
            || self.sipi.load(Acquire) != 0
            || self.irr.iter().any(|w| w.load(Acquire) != 0)
    }

    /// Takes everything posted so far.
    pub(crate) fn take(&self) -> Posted {
        let mut irr = Vectors::default();
        let mut tmr = Vectors::default();
        for i in 0..8 {
            irr.0[i] = self.irr[i].xchg(0, Full);
            // Level bits of vectors not taken now stay for their turn.
            tmr.0[i] = self.tmr[i].load(Acquire) & irr.0[i];
            if tmr.0[i] != 0 {
                let mut old = self.tmr[i].load(Relaxed);
                while let Err(now) = self.tmr[i].cmpxchg(old, old & !tmr.0[i], Full) {
                    old = now;
                }
            }
        }
        let sipi = self.sipi.xchg(0, Full);
        Posted {
            irr,
            tmr,
            nmi: self.nmi.xchg(false, Full),
            init: self.init.xchg(false, Full),
            sipi: (sipi & SIPI_VALID != 0).then_some(sipi as u8),
        }
    }

    /// The RUN ioctl's thread registers itself (`Some`) and leaves (`None`).
    pub(crate) fn set_task(&self, task: Option<ARef<Task>>) {
        *self.task.lock() = task;
    }

    /// Wakes the vCPU's thread from HLT, and makes it leave guest mode if it
    /// runs on another CPU, so it sees what was posted.
    fn kick(&self) {
        let task = self.task.lock();
        if let Some(task) = task.as_ref() {
            task.wake_up();
            // SAFETY: the task is alive (we hold a reference, under the
            // lock); `kick_process` only sends a reschedule IPI to the CPU
            // it runs on, if that is not this one, and may be called with
            // interrupts off.
            unsafe { kernel::bindings::kick_process(task.as_ptr()) };
        }
    }
}
