// SPDX-License-Identifier: GPL-2.0

//! VM-exit handling: the raw exit is decoded once (`reason`) and dispatched
//! with a `match`; each handler either finishes the exit in the kernel and
//! resumes the guest, or fills the run area for user space.

pub(crate) mod cpuid;
pub(crate) mod decode;
mod guest_mem;
pub(crate) mod io;
pub(crate) mod mmio;
pub(crate) mod msr;
pub(crate) mod pagewalk;
pub(crate) mod reason;

use crate::{
    uapi,
    vcpu::{self, regs::RAX, Guest, Pending, Vcpu},
    vmx::{
        current::CurrentVmcs,
        vmcs::{Field32, Field32Ro, Field64Ro, FieldNat, FieldNatRo},
    },
};

use reason::{CrAccess, EptViolation, ExitReason, Reason};

/// What the run loop does after an exit.
pub(crate) enum Action {
    /// Handled: enter the guest again, still inside the window.
    Resume,
    /// Leave the window so the host can take an interrupt, then enter again.
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

/// The guest's local APIC base MSR: default address, enabled, BSP.
pub(crate) const APIC_BASE_DEFAULT: u64 = 0xfee0_0000 | (1 << 11) | (1 << 8);

const VECTOR_UD: u8 = 6;
const VECTOR_GP: u8 = 13;
const INTR_TYPE_NMI: u32 = 2;
const INTR_TYPE_HW_EXCEPTION: u32 = 3;
const INTR_VALID: u32 = 1 << 31;
const INTR_DELIVER_ERROR_CODE: u32 = 1 << 11;
/// Interruptibility: blocking by STI and by MOV SS end with the instruction.
const BLOCKING_STI_MOV_SS: u32 = 0b11;

/// Moves RIP past the instruction that exited.
pub(crate) fn skip_instruction(vmcs: &CurrentVmcs<'_>) {
    advance_rip(vmcs, u64::from(vmcs.read(Field32Ro::ExitInstructionLength)));
}

/// Moves RIP `len` bytes on, ending STI/MOV SS blocking as executing an
/// instruction does.
fn advance_rip(vmcs: &CurrentVmcs<'_>, len: u64) {
    vmcs.write(
        FieldNat::GuestRip,
        vmcs.read(FieldNat::GuestRip).wrapping_add(len),
    );
    let intr = vmcs.read(Field32::GuestInterruptibility);
    if intr & BLOCKING_STI_MOV_SS != 0 {
        vmcs.write(Field32::GuestInterruptibility, intr & !BLOCKING_STI_MOV_SS);
    }
}

/// Queues hardware exception `vector` for delivery at the next VM entry.
fn inject(vmcs: &CurrentVmcs<'_>, vector: u8, error_code: Option<u32>) -> Action {
    let mut info = u32::from(vector) | (INTR_TYPE_HW_EXCEPTION << 8) | INTR_VALID;
    // Without protected mode there are no error codes (and VM entry
    // refuses one).
    if let Some(code) = error_code.filter(|_| vcpu::guest_cr0(vmcs) & 1 != 0) {
        info |= INTR_DELIVER_ERROR_CODE;
        vmcs.write(Field32::EntryExceptionErrorCode, code);
    }
    vmcs.write(Field32::EntryInterruptionInfo, info);
    Action::Resume
}

pub(crate) fn inject_ud(vmcs: &CurrentVmcs<'_>) -> Action {
    inject(vmcs, VECTOR_UD, None)
}

pub(crate) fn inject_gp(vmcs: &CurrentVmcs<'_>) -> Action {
    inject(vmcs, VECTOR_GP, Some(0))
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

pub(crate) fn handle(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let raw = vmcs.read(Field32Ro::ExitReason);
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
    let vectoring = vmcs.read(Field32Ro::IdtVectoringInfo);
    if vectoring & INTR_VALID != 0 {
        if reason == Reason::EptViolation {
            // Event delivery through MMIO cannot be emulated.
            return internal_error(
                vcpu,
                vmcs,
                uapi::RVMX_INTERNAL_ERROR_EMULATION,
                u64::from(vectoring),
            );
        }
        vmcs.write(Field32::EntryInterruptionInfo, vectoring & !(1 << 12));
        vmcs.write(
            Field32::EntryExceptionErrorCode,
            vmcs.read(Field32Ro::IdtVectoringErrorCode),
        );
        vmcs.write(
            Field32::EntryInstructionLength,
            vmcs.read(Field32Ro::ExitInstructionLength),
        );
    }
    match reason {
        // The timer bounds a stay in the guest: leave the window so pending
        // host interrupts, signals and reschedules are seen.
        Reason::ExternalInterrupt | Reason::PreemptionTimer => Action::Host,
        Reason::ExceptionOrNmi => {
            let info = vmcs.read(Field32Ro::ExitInterruptionInfo);
            if (info >> 8) & 7 == INTR_TYPE_NMI {
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
            let (leaf, sub) = (g.regs.gpr[RAX] as u32, g.regs.gpr[vcpu::regs::RCX] as u32);
            let out = g.cpuid.lookup(leaf, sub, vcpu.id);
            for (reg, value) in [RAX, vcpu::regs::RBX, vcpu::regs::RCX, vcpu::regs::RDX]
                .into_iter()
                .zip(out)
            {
                g.regs.gpr[reg] = u64::from(value);
            }
            skip_instruction(vmcs);
            Action::Resume
        }
        Reason::Hlt => {
            skip_instruction(vmcs);
            vcpu.run.set_exit(uapi::RVMX_EXIT_HLT, ());
            Action::User
        }
        Reason::Invd | Reason::Wbinvd => {
            skip_instruction(vmcs);
            Action::Resume
        }
        Reason::Vmcall => {
            let r = &g.regs.gpr;
            let args = [r[3], r[1], r[2], r[6], r[7], r[8]];
            skip_instruction(vmcs);
            g.pending = Pending::Hypercall;
            vcpu.run.set_exit(
                uapi::RVMX_EXIT_HYPERCALL,
                uapi::rvmx_exit_hypercall {
                    nr: r[RAX],
                    args,
                    ret: 0,
                    flags: 0,
                },
            );
            Action::User
        }
        Reason::VmxInstruction | Reason::Mwait | Reason::Monitor => inject_ud(vmcs),
        Reason::CrAccess => cr_access(vmcs, g, CrAccess::decode(qual), vcpu),
        Reason::DrAccess => {
            let (dr, to_dr, reg) = (
                (qual & 7) as usize,
                qual & (1 << 4) == 0,
                ((qual >> 8) & 0xf) as u8,
            );
            if to_dr {
                g.dr[dr] = gpr(vmcs, g, reg);
            } else {
                let v = g.dr[dr];
                set_gpr(vmcs, g, reg, v);
            }
            skip_instruction(vmcs);
            Action::Resume
        }
        Reason::Io => io::handle(vcpu, vmcs, g, reason::IoAccess::decode(qual)),
        Reason::Rdmsr => msr::rdmsr(vcpu, vmcs, g),
        Reason::Wrmsr => msr::wrmsr(vcpu, vmcs, g),
        Reason::Xsetbv => xsetbv(vmcs, g),
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
            Action::Mmio(mmio::Fault::capture(vmcs, v))
        }
        Reason::EptMisconfig | Reason::Other(_) => internal_error(
            vcpu,
            vmcs,
            uapi::RVMX_INTERNAL_ERROR_UNHANDLED_EXIT,
            u64::from(raw),
        ),
    }
}

fn cr_access(vmcs: &CurrentVmcs<'_>, g: &mut Guest, access: CrAccess, vcpu: &Vcpu) -> Action {
    let cr0 = vcpu::guest_cr0(vmcs);
    let result = match access {
        CrAccess::MovTo { cr: 0, gpr: r } => vcpu::write_cr0(vcpu, vmcs, gpr(vmcs, g, r)),
        CrAccess::MovTo { cr: 4, gpr: r } => vcpu::write_cr4(vcpu, vmcs, gpr(vmcs, g, r)),
        CrAccess::MovTo { cr: 8, gpr: r } => {
            let v = gpr(vmcs, g, r);
            if v > 0xf {
                return inject_gp(vmcs);
            }
            g.cr8 = v;
            Ok(())
        }
        CrAccess::MovFrom { cr: 8, gpr: r } => {
            let v = g.cr8;
            set_gpr(vmcs, g, r, v);
            Ok(())
        }
        CrAccess::Clts => vcpu::write_cr0(vcpu, vmcs, cr0 & !(1 << 3)),
        // LMSW writes CR0 bits 3:0 but cannot clear PE.
        CrAccess::Lmsw(src) => vcpu::write_cr0(vcpu, vmcs, (cr0 & !0xe) | u64::from(src & 0xf)),
        // CR3 accesses do not exit with EPT; nothing else exists.
        _ => return inject_ud(vmcs),
    };
    match result {
        Ok(()) => {
            skip_instruction(vmcs);
            Action::Resume
        }
        Err(_) => inject_gp(vmcs),
    }
}

/// XSETBV: XCR0 within what the host enables (as read before entering: the
/// hardware XCR0 now is the guest's), with x87, and AVX only with SSE.
fn xsetbv(vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let r = &g.regs.gpr;
    let value = (r[vcpu::regs::RDX] << 32) | (r[RAX] & 0xffff_ffff);
    let host = g.fpu.host_xcr0;
    let valid = r[vcpu::regs::RCX] as u32 == 0
        && value & 1 != 0
        && value & !host == 0
        && (value & 4 == 0 || value & 2 != 0);
    if !valid {
        return inject_gp(vmcs);
    }
    g.fpu.set_xcr0(value);
    skip_instruction(vmcs);
    Action::Resume
}

/// Finishes, at the next `RVMX_RUN`, the exit user space has handled.
pub(crate) fn complete_pending(vcpu: &Vcpu, g: &mut Guest) {
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
