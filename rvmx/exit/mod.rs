// SPDX-License-Identifier: GPL-2.0

//! VM-exit handling: the raw exit is decoded once (`reason`) and dispatched
//! with a `match`; each handler either finishes the exit in the kernel and
//! resumes the guest, or fills the run area for user space. What the next
//! entry injects is decided by `vcpu::entry`, from what handlers leave in
//! the guest state (`Guest::raise`, the local APIC).

pub(crate) mod cpuid;
mod cr;
pub(crate) mod decode;
mod dr;
mod guest_mem;
pub(crate) mod io;
pub(crate) mod lapic;
pub(crate) mod mmio;
pub(crate) mod msr;
pub(crate) mod pagewalk;
pub(crate) mod reason;
mod vmcall;
mod xsetbv;

use crate::{
    arch::rflags,
    uapi,
    vcpu::{self, entry::Event, Guest, MpState, Vcpu},
    vmx::{
        current::CurrentVmcs,
        instr,
        vmcs::{Field32Ro, Field64Ro, FieldNat, FieldNatRo},
    },
};

use reason::{ApicPageAccess, CrAccess, EptViolation, ExitReason, Reason};

/// What the run loop does after an exit.
pub(crate) enum Action {
    /// Handled: enter the guest again, still inside the window.
    Resume,
    /// Leave the window so the host can take an interrupt, or the vCPU can
    /// sleep (HLT), then go on.
    Host,
    /// As `Host`, and hand the NMI that caused the exit to the host.
    Nmi,
    /// The run area holds an exit for user space.
    User,
    /// An MMIO access to emulate once out of the window.
    Mmio(mmio::Fault),
    /// An INS or OUTS to emulate once out of the window.
    StringIo(io::StringIo),
}

/// Moves RIP past the instruction that exited.
pub(crate) fn skip_instruction(vmcs: &CurrentVmcs<'_>) {
    vcpu::entry::advance_rip(vmcs, u64::from(vmcs.read(Field32Ro::ExitInstructionLength)));
}

/// Raises `e` in the guest at the next entry; RIP stays on the instruction.
pub(crate) fn raise(g: &mut Guest, e: Event) -> Action {
    g.raise(e);
    Action::Resume
}

/// The guest's paging registers, to walk its page tables out of the window.
fn guest_paging(vmcs: &CurrentVmcs<'_>) -> pagewalk::Paging {
    pagewalk::Paging {
        cr0: vcpu::guest_cr0(vmcs),
        cr3: vmcs.read(FieldNat::GuestCr3),
        cr4: vmcs.read(FieldNat::GuestCr4),
        efer: vmcs.read(crate::vmx::vmcs::Field64::GuestIa32Efer),
    }
}

/// The guest's current privilege level (SS.DPL).
fn cpl(vmcs: &CurrentVmcs<'_>) -> u8 {
    let ss = crate::vmx::vmcs::Seg::Ss.access_rights();
    ((vmcs.read(ss) >> 5) & 3) as u8
}

/// Reads general-purpose register `n` (RSP lives in the VMCS).
pub(crate) fn gpr(vmcs: &CurrentVmcs<'_>, g: &Guest, n: u8) -> u64 {
    match usize::from(n & 0xf) {
        vcpu::regs::RSP => vmcs.read(FieldNat::GuestRsp),
        i => g.regs.gpr[i],
    }
}

pub(crate) fn set_gpr(vmcs: &CurrentVmcs<'_>, g: &mut Guest, n: u8, value: u64) {
    match usize::from(n & 0xf) {
        vcpu::regs::RSP => vmcs.write(FieldNat::GuestRsp, value),
        i => g.regs.gpr[i] = value,
    }
}

/// Reports an exit rvmx cannot handle to user space instead of wedging.
fn internal_error(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, suberror: u32, code: u64) -> Action {
    let mut data = [0u64; 16];
    data[0] = code;
    data[1] = vmcs.read(FieldNatRo::ExitQualification);
    data[2] = vmcs.read(FieldNat::GuestRip);
    data[3] = vmcs.read(Field64Ro::GuestPhysicalAddress);
    vcpu.run.set_exit(
        uapi::RVMX_EXIT_INTERNAL_ERROR,
        uapi::rvmx_exit_internal {
            suberror,
            ndata: 4,
            data,
        },
    );
    Action::User
}

/// A failed VM entry, with the hardware's reason (bit 63 set: the entry
/// instruction failed and the low bits are the VM-instruction error).
pub(crate) fn report_entry_failure(vcpu: &Vcpu, reason: u64, cpu: u32) {
    vcpu.run.set_exit(
        uapi::RVMX_EXIT_FAIL_ENTRY,
        uapi::rvmx_exit_fail_entry {
            hardware_entry_failure_reason: reason,
            cpu,
        },
    );
}

/// HLT: the vCPU sleeps outside the window unless an event would end the
/// halt at once.
fn hlt(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    skip_instruction(vmcs);
    vcpu::entry::fold_posted(vcpu.mailbox(), g);
    let interrupts = vmcs.read(FieldNat::GuestRflags) & rflags::IF != 0;
    if vcpu::entry::halt_wakes(g, interrupts) {
        return Action::Resume;
    }
    g.mp = MpState::Halted;
    vcpu.stats.inc(crate::stats::V::Halts);
    g.halted_with_if = interrupts;
    Action::Host
}

/// `window_end` is the TSC at which the VMX window must close.
pub(crate) fn handle(
    vcpu: &Vcpu,
    vmcs: &CurrentVmcs<'_>,
    g: &mut Guest,
    window_end: u64,
) -> Action {
    let raw = vmcs.read(Field32Ro::ExitReason);
    vcpu.stats.exit(raw);
    let reason = match ExitReason::decode(raw) {
        ExitReason::EntryFailure(basic) => {
            report_entry_failure(
                vcpu,
                u64::from(basic),
                kernel::cpu::CpuId::current().as_u32(),
            );
            return Action::User;
        }
        ExitReason::Exit(reason) => reason,
    };
    let qual = vmcs.read(FieldNatRo::ExitQualification);
    // An exit in the middle of delivering an event (an interrupt or
    // exception through the IDT touched memory that exited): the event is
    // delivered again at the next entry.
    if let Some(e) = Event::interrupted(vmcs) {
        g.reinject = Some(e);
        if matches!(reason, Reason::EptViolation | Reason::ApicAccess) {
            // Event delivery through MMIO cannot be emulated. The event
            // stays pending: a VMM that maps memory there and runs the
            // vCPU again has it delivered.
            return internal_error(
                vcpu,
                vmcs,
                uapi::RVMX_INTERNAL_ERROR_DELIVERY_EV,
                u64::from(e.raw()),
            );
        }
    }
    match reason {
        Reason::ExternalInterrupt => Action::Host,
        // The preemption timer is the local APIC timer (the next entry
        // fires it) or the end of the window.
        Reason::PreemptionTimer if instr::rdtsc() < window_end => Action::Resume,
        Reason::PreemptionTimer => Action::Host,
        // The guest can take what waited: the next entry injects it.
        Reason::InterruptWindow | Reason::NmiWindow => Action::Resume,
        Reason::ExceptionOrNmi => {
            let info = vmcs.read(Field32Ro::ExitInterruptionInfo);
            if (info >> 8) & 7 == 2 {
                Action::Nmi
            } else {
                internal_error(
                    vcpu,
                    vmcs,
                    uapi::RVMX_INTERNAL_ERROR_UNHANDLED_EXIT,
                    u64::from(raw),
                )
            }
        }
        Reason::TripleFault => {
            vcpu.run.set_exit(uapi::RVMX_EXIT_SHUTDOWN, ());
            Action::User
        }
        Reason::Cpuid => {
            g.cpuid_instruction(vcpu.id);
            skip_instruction(vmcs);
            Action::Resume
        }
        Reason::Hlt => hlt(vcpu, vmcs, g),
        Reason::Invd | Reason::Wbinvd => {
            skip_instruction(vmcs);
            Action::Resume
        }
        Reason::Vmcall => vmcall::handle(vcpu, vmcs, g),
        Reason::VmxInstruction | Reason::Mwait | Reason::Monitor => raise(g, Event::ud()),
        // The guest has no performance counters (CPUID leaf 0xa is empty):
        // every counter index is invalid.
        Reason::Rdpmc => raise(g, Event::gp()),
        Reason::CrAccess => cr::access(vcpu, vmcs, g, CrAccess::decode(qual)),
        Reason::DrAccess => dr::access(vmcs, g, qual),
        Reason::Io => io::handle(vcpu, vmcs, g, reason::IoAccess::decode(qual)),
        Reason::Rdmsr => msr::rdmsr(vcpu, vmcs, g),
        Reason::Wrmsr => msr::wrmsr(vcpu, vmcs, g),
        Reason::Xsetbv => xsetbv::handle(vmcs, g),
        Reason::EptViolation => {
            let v = EptViolation::decode(qual);
            if v.fetch {
                // Executing from MMIO is beyond emulation.
                return internal_error(
                    vcpu,
                    vmcs,
                    uapi::RVMX_INTERNAL_ERROR_EMULATION,
                    u64::from(raw),
                );
            }
            Action::Mmio(mmio::Fault::at(
                vmcs,
                vmcs.read(Field64Ro::GuestPhysicalAddress),
                v.write,
            ))
        }
        Reason::ApicWrite => vcpu::apicv::write(vcpu, g, qual as u32),
        Reason::VirtualizedEoi => vcpu::apicv::level_eoi(vcpu, g, qual as u8),
        Reason::ApicAccess => match (ApicPageAccess::decode(qual), g.lapic.mmio_page()) {
            // The instruction did not run: emulate it as an access to the page.
            (Some(a), Some(page)) => {
                Action::Mmio(mmio::Fault::at(vmcs, page + u64::from(a.offset), a.write))
            }
            _ => internal_error(
                vcpu,
                vmcs,
                uapi::RVMX_INTERNAL_ERROR_UNHANDLED_EXIT,
                u64::from(raw),
            ),
        },
        Reason::EptMisconfig | Reason::Other(_) => internal_error(
            vcpu,
            vmcs,
            uapi::RVMX_INTERNAL_ERROR_UNHANDLED_EXIT,
            u64::from(raw),
        ),
    }
}
