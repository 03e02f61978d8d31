// SPDX-License-Identifier: GPL-2.0

//! The privileged x86 instructions rvmx executes, one thin wrapper each.
//!
//! Every wrapper is `unsafe`: each states what its caller must guarantee.
//! VMX instructions report failure through RFLAGS (SDM Vol. 3, 31.2):
//! CF=1 is VMfailInvalid, ZF=1 is VMfailValid.

use core::arch::asm;

pub(crate) const CR4_VMXE: u64 = 1 << 13;
/// CR4.FRED: the host delivers events with FRED instead of the IDT.
pub(crate) const CR4_FRED: u64 = 1 << 32;

/// Why a VMX instruction failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VmFail {
    /// CF=1: no current VMCS, or the operand was invalid.
    Invalid,
    /// ZF=1: the current VMCS holds an error number in its
    /// VM-instruction error field.
    Valid,
}

/// Returns (eax, ebx, ecx, edx) of CPUID `leaf`/`subleaf`.
pub(crate) fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let (eax, ecx, edx): (u32, u32, u32);
    let rbx: u64;
    // SAFETY: CPUID has no side effects beyond its outputs. RBX is reserved
    // by LLVM, so it is swapped with another register around the instruction.
    unsafe {
        asm!(
            "mov {rbx_save}, rbx",
            "cpuid",
            "xchg {rbx_save}, rbx",
            rbx_save = out(reg) rbx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nostack, preserves_flags, nomem),
        );
    }
    (eax, rbx as u32, ecx, edx)
}

/// Reads model-specific register `msr`.
///
/// # Safety
///
/// `msr` must exist on this CPU (RDMSR of an absent MSR raises #GP).
pub(crate) unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR only reads it.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
             options(nostack, preserves_flags, nomem));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

pub(crate) fn read_cr0() -> u64 {
    let cr0: u64;
    // SAFETY: reading CR0 in ring 0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) cr0, options(nostack, preserves_flags, nomem)) };
    cr0
}

pub(crate) fn read_cr4() -> u64 {
    let cr4: u64;
    // SAFETY: reading CR4 in ring 0 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) cr4, options(nostack, preserves_flags, nomem)) };
    cr4
}

/// Writes CR4, bypassing the kernel's CR4 shadow.
///
/// # Safety
///
/// Interrupts must be off from before this write until CR4 again holds the
/// value the kernel's shadow records, and `cr4` must differ from it only in
/// bits the kernel does not track (VMXE): otherwise the kernel's next CR4
/// update, or one of its pinned-bit checks, would see state it did not set.
pub(crate) unsafe fn write_cr4(cr4: u64) {
    // SAFETY: guaranteed by the caller, see above.
    unsafe { asm!("mov cr4, {}", in(reg) cr4, options(nostack, preserves_flags)) };
}

/// Converts the RFLAGS outcome of a VMX instruction into a `Result`.
fn vm_result(cf: u8, zf: u8) -> Result<(), VmFail> {
    match (cf, zf) {
        (0, 0) => Ok(()),
        (0, _) => Err(VmFail::Valid),
        _ => Err(VmFail::Invalid),
    }
}

/// Enters VMX root operation with the VMXON region at physical `region`.
///
/// # Safety
///
/// Interrupts must be off; CR4.VMXE must be set and CR0/CR4 must satisfy
/// the VMX fixed bits; `region` must be the physical address of a 4 KiB
/// aligned page that starts with the VMCS revision identifier and that
/// nothing else uses while this CPU is in VMX operation.
pub(crate) unsafe fn vmxon(region: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller, see above. The operand is read from
    // the stack slot holding `region`.
    unsafe {
        asm!("vmxon [{}]", "setc {}", "setz {}",
             in(reg) &region, out(reg_byte) cf, out(reg_byte) zf,
             options(nostack, readonly));
    }
    vm_result(cf, zf)
}

/// Leaves VMX operation.
///
/// # Safety
///
/// This CPU must be in VMX root operation entered by rvmx's own VMXON,
/// with interrupts off since.
pub(crate) unsafe fn vmxoff() -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("vmxoff", "setc {}", "setz {}", out(reg_byte) cf, out(reg_byte) zf,
             options(nostack));
    }
    vm_result(cf, zf)
}
