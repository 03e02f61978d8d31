// SPDX-License-Identifier: GPL-2.0

//! Everything the next VM entry needs, decided in one place.
//!
//! Before the window: `complete_user_exit` finishes the exit user space
//! handled (it may touch guest memory, so it cannot run with interrupts
//! off). Inside the window, before every VMLAUNCH/VMRESUME: `prepare`
//! applies INIT/SIPI, moves RIP past an emulated instruction, folds what
//! other threads posted into the local APIC, fires its timer, chooses the
//! one event to inject (re-injection of an event whose delivery an exit
//! interrupted, then an exception an exit handler raised, then an NMI, then
//! the highest deliverable interrupt), asks for an interrupt or NMI window
//! when the guest cannot take it yet, and sets the VMX-preemption timer to
//! the local APIC timer's deadline or the end of the window.

use crate::{
    arch::{rflags, vector},
    exit::{io, mmio, msr},
    stats::V,
    uapi,
    vmx::{
        controls::{PROC_INTERRUPT_WINDOW_EXITING, PROC_NMI_WINDOW_EXITING},
        current::CurrentVmcs,
        instr,
        vmcs::{Field32, Field32Ro, FieldNat},
    },
};

use super::{apicv, mailbox::Mailbox, regs::RAX, reset, Guest, MpState, Pending, UserExit, Vcpu};

const INTR_TYPE_EXTERNAL: u32 = 0;
const INTR_TYPE_NMI: u32 = 2;
const INTR_TYPE_HW_EXCEPTION: u32 = 3;
const INTR_VALID: u32 = 1 << 31;
const INTR_DELIVER_ERROR_CODE: u32 = 1 << 11;
/// IDT-vectoring information bit 12 is undefined; VM entry wants it 0.
const VECTORING_UNDEFINED: u32 = 1 << 12;
/// Software interrupts and exceptions (types 4-6) need an instruction length.
const fn needs_length(info: u32) -> bool {
    (info >> 8) & 7 >= 4
}

/// Interruptibility state bits.
pub(super) const BLOCKING_STI: u32 = 1 << 0;
pub(super) const BLOCKING_MOV_SS: u32 = 1 << 1;
pub(super) const BLOCKING_NMI: u32 = 1 << 3;

/// What kind of event an `Event` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    External,
    Nmi,
    Exception,
    /// Software interrupts and exceptions (INT n, INT3, INTO, INT1).
    Software,
}

/// An event for VM entry, in VM-entry interruption-information format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    info: u32,
    error_code: u32,
    insn_len: u32,
}

impl Event {
    /// Hardware exception `vector`; the error code is dropped outside
    /// protected mode, where there are none (and VM entry refuses one).
    pub(crate) fn exception(vector: u8, error_code: Option<u32>) -> Self {
        let mut info = u32::from(vector) | (INTR_TYPE_HW_EXCEPTION << 8) | INTR_VALID;
        if error_code.is_some() {
            info |= INTR_DELIVER_ERROR_CODE;
        }
        Self {
            info,
            error_code: error_code.unwrap_or(0),
            insn_len: 0,
        }
    }

    pub(crate) fn gp() -> Self {
        Self::exception(vector::GP, Some(0))
    }

    pub(crate) fn ud() -> Self {
        Self::exception(vector::UD, None)
    }

    pub(crate) fn nmi() -> Self {
        Self {
            info: u32::from(vector::NMI) | (INTR_TYPE_NMI << 8) | INTR_VALID,
            error_code: 0,
            insn_len: 0,
        }
    }

    pub(crate) fn external(vector: u8) -> Self {
        Self {
            info: u32::from(vector) | (INTR_TYPE_EXTERNAL << 8) | INTR_VALID,
            error_code: 0,
            insn_len: 0,
        }
    }

    /// The event an exit interrupted while delivering it, if any (SDM Vol.
    /// 3, 28.2.4): delivered again at the next entry.
    pub(crate) fn interrupted(vmcs: &CurrentVmcs<'_>) -> Option<Self> {
        let info = vmcs.read(Field32Ro::IdtVectoringInfo);
        (info & INTR_VALID != 0).then(|| Self {
            info: info & !VECTORING_UNDEFINED,
            error_code: vmcs.read(Field32Ro::IdtVectoringErrorCode),
            insn_len: if needs_length(info) {
                vmcs.read(Field32Ro::ExitInstructionLength)
            } else {
                0
            },
        })
    }

    pub(crate) fn raw(&self) -> u32 {
        self.info
    }

    pub(crate) fn vector(&self) -> u8 {
        self.info as u8
    }

    pub(crate) fn kind(&self) -> EventKind {
        match (self.info >> 8) & 7 {
            INTR_TYPE_EXTERNAL => EventKind::External,
            INTR_TYPE_NMI => EventKind::Nmi,
            INTR_TYPE_HW_EXCEPTION => EventKind::Exception,
            _ => EventKind::Software,
        }
    }

    pub(crate) fn error_code(&self) -> Option<u32> {
        (self.info & INTR_DELIVER_ERROR_CODE != 0).then_some(self.error_code)
    }

    fn write(&self, vmcs: &CurrentVmcs<'_>, protected_mode: bool) {
        let mut info = self.info;
        if info & INTR_DELIVER_ERROR_CODE != 0 {
            if protected_mode {
                vmcs.write(Field32::EntryExceptionErrorCode, self.error_code);
            } else {
                info &= !INTR_DELIVER_ERROR_CODE;
            }
        }
        if needs_length(info) {
            vmcs.write(Field32::EntryInstructionLength, self.insn_len);
        }
        vmcs.write(Field32::EntryInterruptionInfo, info);
    }
}

/// Finishes, at the next `RVMX_RUN`, the exit user space has handled.
pub(super) fn complete_user_exit(vcpu: &Vcpu, g: &mut Guest) {
    match core::mem::take(&mut g.pending) {
        Pending::None => {}
        Pending::PortIn { size } => io::complete_in(vcpu, g, size),
        Pending::PortInString { io, count } => io::complete_in_string(vcpu, g, &io, count),
        Pending::MmioRead {
            size,
            dest,
            dest_bytes,
        } => mmio::complete_load(vcpu, g, size, dest, dest_bytes),
        Pending::UserMsr { write, insn_len } => msr::complete_user(vcpu, g, write, insn_len),
        Pending::Hypercall => {
            let call: uapi::rvmx_exit_hypercall = vcpu.run.exit_details();
            g.regs.gpr[RAX] = call.ret;
        }
    }
}

/// Moves RIP `len` bytes on, ending STI/MOV SS blocking as executing an
/// instruction does.
pub(crate) fn advance_rip(vmcs: &CurrentVmcs<'_>, len: u64) {
    vmcs.write(
        FieldNat::GuestRip,
        vmcs.read(FieldNat::GuestRip).wrapping_add(len),
    );
    let intr = vmcs.read(Field32::GuestInterruptibility);
    if intr & (BLOCKING_STI | BLOCKING_MOV_SS) != 0 {
        vmcs.write(
            Field32::GuestInterruptibility,
            intr & !(BLOCKING_STI | BLOCKING_MOV_SS),
        );
    }
}

/// Takes what other threads posted: interrupts into the local APIC, NMIs
/// to inject, INIT and SIPI into the vCPU's run state. Safe anywhere (no
/// VMCS): also used while the vCPU sleeps.
pub(crate) fn fold_posted(mailbox: &Mailbox, g: &mut Guest) {
    if !mailbox.has_posted() {
        return;
    }
    let posted = mailbox.take();
    if posted.init {
        g.init();
    }
    if let Some(vector) = posted.sipi {
        // A SIPI only starts a processor that waits for one.
        if g.mp == MpState::WaitForSipi {
            g.mp = MpState::Runnable;
            g.sipi = Some(vector);
        }
    }
    g.nmi_pending |= posted.nmi;
    g.lapic.accept_posted(&posted.irr, &posted.tmr);
}

/// Whether a halted vCPU wakes: an interrupt it would take, or an NMI.
pub(crate) fn halt_wakes(g: &Guest, interrupts_enabled: bool) -> bool {
    g.nmi_pending || (interrupts_enabled && g.lapic.deliverable().is_some())
}

/// Fires the local APIC timer if it expired.
pub(super) fn run_timer(vcpu: &Vcpu, g: &mut Guest) {
    let now = g.tsc();
    if g.lapic.timer_deadline().is_some_and(|d| now >= d) {
        g.lapic.timer_expire(now);
        vcpu.stats.inc(V::TimerExpiries);
    }
}

/// The start of a processor at a SIPI's vector: real mode at vector × 4 KiB
/// (SDM Vol. 3, 10.4.4).
fn start_at(vmcs: &CurrentVmcs<'_>, vector: u8) {
    let cs = crate::vmx::vmcs::Seg::Cs;
    vmcs.write(cs.selector(), u16::from(vector) << 8);
    vmcs.write(cs.base(), u64::from(vector) << 12);
    vmcs.write(FieldNat::GuestRip, 0);
}

/// Whether the guest can take an interrupt now.
fn interruptible(vmcs: &CurrentVmcs<'_>) -> bool {
    vmcs.read(FieldNat::GuestRflags) & rflags::IF != 0
        && vmcs.read(Field32::GuestInterruptibility) & (BLOCKING_STI | BLOCKING_MOV_SS) == 0
}

/// Turns a window exit on or off in the processor-based controls.
fn set_window(vmcs: &CurrentVmcs<'_>, g: &mut Guest, bit: u32, on: bool) {
    let proc = if on { g.proc | bit } else { g.proc & !bit };
    if proc != g.proc {
        g.proc = proc;
        vmcs.write(Field32::ProcBasedControls, proc);
    }
}

/// What the pre-entry step found.
pub(super) enum Prepared {
    /// Enter the guest.
    Enter,
    /// The vCPU cannot run (INIT put it in wait-for-SIPI): end the window.
    NotRunnable,
    /// The run area holds an exit for user space.
    ToUser,
}

/// The pre-entry step, before every VM entry.
pub(super) fn prepare(
    vcpu: &Vcpu,
    vmcs: &CurrentVmcs<'_>,
    g: &mut Guest,
    window_end: u64,
) -> Prepared {
    fold_posted(vcpu.mailbox(), g);
    if g.reset_pending {
        g.reset_pending = false;
        reset::program(vcpu, vmcs);
        g.proc = vcpu.vm.controls.proc;
        g.proc2 = vcpu.vm.controls.proc2;
    }
    if g.mp != MpState::Runnable {
        return Prepared::NotRunnable;
    }
    if let Some(v) = g.sipi.take() {
        start_at(vmcs, v);
    }
    if g.rip_advance != 0 {
        advance_rip(vmcs, core::mem::take(&mut g.rip_advance));
    }
    // Reported now, with the instruction that caused it complete.
    if let Some(UserExit::IoapicEoi(vector)) = g.user_exit.take() {
        vcpu.run
            .set_exit(uapi::RVMX_EXIT_IOAPIC_EOI, uapi::rvmx_exit_eoi { vector });
        return Prepared::ToUser;
    }
    run_timer(vcpu, g);
    vcpu.mailbox().publish_target(&g.lapic.target());
    apicv::mirror(vmcs, g);
    inject(vcpu, vmcs, g);

    // The preemption timer counts down at TSC >> IA32_VMX_MISC[4:0]: the
    // APIC timer's deadline (in guest TSC) or the window's end (in host
    // TSC), whichever is first.
    let rate = vcpu.vm.host.caps.misc & 0x1f;
    let now = instr::rdtsc();
    let to_window_end = window_end.saturating_sub(now);
    let left = g.lapic.timer_deadline().map_or(to_window_end, |d| {
        d.saturating_sub(now.wrapping_add(g.tsc_offset))
            .min(to_window_end)
    });
    let ticks = (left >> rate).min(u64::from(u32::MAX)) as u32;
    vmcs.write(Field32::PreemptionTimerValue, ticks);
    Prepared::Enter
}

/// Chooses the event of the next entry, and the window exits for the ones
/// that must wait. With APIC virtualization the processor delivers the
/// local APIC's interrupts itself (`apicv`): only the other events are
/// injected here, and while one is, the interrupt window also holds the
/// processor's delivery back until the guest can take an interrupt again:
/// the injected event must come first (`interrupt_state_save_and_restore`
/// saw the virtual interrupt delivered before a restored #UD without it,
/// under Bochs).
fn inject(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) {
    let protected = super::guest_cr0(vmcs) & 1 != 0;
    let pending = g.lapic.deliverable();
    let deliverable = if g.vapic.is_some() { None } else { pending };
    let mut irq_window = false;
    let mut nmi_window = false;
    let reinjected = g.reinject.is_some();
    if let Some(e) = g.reinject.take().or_else(|| g.exception.take()) {
        vcpu.stats.injected(e.kind(), reinjected);
        e.write(vmcs, protected);
        irq_window = pending.is_some();
        nmi_window = g.nmi_pending;
    } else if g.nmi_pending {
        let blocked = BLOCKING_STI | BLOCKING_MOV_SS | BLOCKING_NMI;
        if vmcs.read(Field32::GuestInterruptibility) & blocked == 0 {
            Event::nmi().write(vmcs, protected);
            vcpu.stats.inc(V::NmiInjections);
            g.nmi_pending = false;
            irq_window = pending.is_some();
        } else {
            nmi_window = true;
            irq_window = deliverable.is_some();
        }
    } else if let Some(v) = deliverable {
        if interruptible(vmcs) {
            g.lapic.acknowledge(v);
            Event::external(v).write(vmcs, protected);
            vcpu.stats.inc(V::IrqInjections);
        } else {
            irq_window = true;
        }
    }
    set_window(vmcs, g, PROC_INTERRUPT_WINDOW_EXITING, irq_window);
    // Without virtual NMIs there is no NMI window: the NMI waits for the
    // next exit instead.
    if vcpu.vm.controls.uses_virtual_nmis() {
        set_window(vmcs, g, PROC_NMI_WINDOW_EXITING, nmi_window);
    }
}

/// The run area's view of interrupt state, as KVM fills it at each exit.
pub(super) fn report(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &Guest) {
    let if_flag = vmcs.read(FieldNat::GuestRflags) & rflags::IF != 0;
    vcpu.run.set_interrupt_state(
        if_flag,
        interruptible(vmcs) && g.reinject.is_none() && g.exception.is_none(),
        u64::from(g.lapic.tpr() >> 4),
        g.lapic.base(),
    );
}
