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

/// An instruction raised an exception, which its exception-table entry
/// caught: the kernel's fixup resumed after it instead of oopsing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Faulted;

/// `asm!` template lines that give the instruction at local label 2 an
/// exception-table entry (`EX_TYPE_DEFAULT`, 12-byte entries as in
/// `arch/x86/include/asm/asm.h`) whose fixup resumes at label 3.
macro_rules! extable_2_to_3 {
    () => {
        concat!(
            ".pushsection __ex_table, \"aM\", @progbits, 12\n",
            ".balign 4\n",
            ".long 2b - .\n",
            ".long 3b - .\n",
            ".long 1\n",
            ".popsection"
        )
    };
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

pub(crate) fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nostack, preserves_flags, nomem))
    };
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

/// Writes model-specific register `msr`.
///
/// # Safety
///
/// `msr` must exist and accept `value`, and changing it must not break the
/// host: callers only switch MSRs that the host restores or does not use
/// while they hold the guest's value.
pub(crate) unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags));
    }
}

pub(crate) fn read_cr3() -> u64 {
    let cr3: u64;
    // SAFETY: reading CR3 in ring 0 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nostack, preserves_flags, nomem)) };
    cr3
}

/// A descriptor-table register as SGDT/SIDT store it.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
pub(crate) struct DescriptorTable {
    pub(crate) limit: u16,
    pub(crate) base: u64,
}

pub(crate) fn sgdt() -> DescriptorTable {
    let mut dt = DescriptorTable::default();
    // SAFETY: SGDT stores 10 bytes into `dt`, which is that large.
    unsafe { asm!("sgdt [{}]", in(reg) &raw mut dt, options(nostack, preserves_flags)) };
    dt
}

pub(crate) fn sidt() -> DescriptorTable {
    let mut dt = DescriptorTable::default();
    // SAFETY: SIDT stores 10 bytes into `dt`, which is that large.
    unsafe { asm!("sidt [{}]", in(reg) &raw mut dt, options(nostack, preserves_flags)) };
    dt
}

/// Reloads the GDTR (a VM exit truncates its limit to 0xffff).
///
/// # Safety
///
/// `dt` must be the value `sgdt` returned on this CPU.
pub(crate) unsafe fn lgdt(dt: &DescriptorTable) {
    // SAFETY: guaranteed by the caller: the host's own GDT.
    unsafe { asm!("lgdt [{}]", in(reg) dt, options(nostack, preserves_flags, readonly)) };
}

/// Reloads the IDTR (a VM exit truncates its limit to 0xffff).
///
/// # Safety
///
/// `dt` must be the value `sidt` returned on this CPU.
pub(crate) unsafe fn lidt(dt: &DescriptorTable) {
    // SAFETY: guaranteed by the caller: the host's own IDT.
    unsafe { asm!("lidt [{}]", in(reg) dt, options(nostack, preserves_flags, readonly)) };
}

/// The selectors of the segment registers a VM exit may change.
#[derive(Clone, Copy, Default)]
pub(crate) struct Selectors {
    pub(crate) cs: u16,
    pub(crate) ss: u16,
    pub(crate) ds: u16,
    pub(crate) es: u16,
    pub(crate) fs: u16,
    pub(crate) gs: u16,
    pub(crate) tr: u16,
    pub(crate) ldtr: u16,
}

pub(crate) fn selectors() -> Selectors {
    let (cs, ss, ds, es, fs, gs, tr, ldtr): (u16, u16, u16, u16, u16, u16, u16, u16);
    // SAFETY: reading segment selectors, TR and LDTR has no side effects
    // (SLDT and STR are allowed at CPL 0 whatever CR4.UMIP says).
    unsafe {
        asm!("mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es",
             "mov {4:x}, fs", "mov {5:x}, gs", "str {6:x}", "sldt {7:x}",
             out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs,
             out(reg) gs, out(reg) tr, out(reg) ldtr,
             options(nostack, preserves_flags, nomem));
    }
    Selectors {
        cs,
        ss,
        ds,
        es,
        fs,
        gs,
        tr,
        ldtr,
    }
}

/// Loads LDTR, which a VM exit makes null.
///
/// # Safety
///
/// `ldtr` must be the selector `selectors` read on this CPU, with the GDT
/// that was current then.
pub(crate) unsafe fn lldt(ldtr: u16) {
    // SAFETY: guaranteed by the caller: the LDT the task had.
    unsafe { asm!("lldt {0:x}", in(reg) ldtr, options(nostack, preserves_flags)) };
}

/// Loads FS with `fs`, which sets FS's base from its descriptor: the
/// caller restores IA32_FS_BASE after.
///
/// # Safety
///
/// `fs` must be the selector `selectors` read on this thread.
pub(crate) unsafe fn load_fs(fs: u16) {
    // SAFETY: guaranteed by the caller: the value FS held.
    unsafe { asm!("mov fs, {0:x}", in(reg) fs, options(nostack, preserves_flags)) };
}

pub(crate) fn read_dr7() -> u64 {
    let dr7: u64;
    // SAFETY: reading DR7 at CPL 0 has no side effects.
    unsafe { asm!("mov {}, dr7", out(reg) dr7, options(nostack, preserves_flags, nomem)) };
    dr7
}

/// # Safety
///
/// `dr7` must be the host's value `read_dr7` read on this CPU, with the
/// same DR0-DR3 loaded.
pub(crate) unsafe fn write_dr7(dr7: u64) {
    // SAFETY: guaranteed by the caller: the host's own breakpoints.
    unsafe { asm!("mov dr7, {}", in(reg) dr7, options(nostack, preserves_flags)) };
}

/// RDMSR of an MSR that may not exist on this processor (or emulator): its
/// #GP is caught and reported as `Faulted`.
pub(crate) fn try_rdmsr(msr: u32) -> Result<u64, Faulted> {
    let (lo, hi): (u32, u32);
    let mut faulted: u32 = 1;
    // SAFETY: RDMSR only reads; a #GP for a missing MSR is caught by the
    // exception-table entry, which resumes at label 3 with `faulted` set.
    unsafe {
        asm!("xor eax, eax", "xor edx, edx", "2: rdmsr", "xor {f:e}, {f:e}", "3:",
             extable_2_to_3!(), f = inout(reg) faulted, in("ecx") msr,
             out("eax") lo, out("edx") hi, options(nostack));
    }
    if faulted == 0 {
        Ok((u64::from(hi) << 32) | u64::from(lo))
    } else {
        Err(Faulted)
    }
}

/// WRMSR whose #GP (a value the processor refuses) is caught.
///
/// # Safety
///
/// As `wrmsr`, except that a value the processor refuses is allowed.
pub(crate) unsafe fn try_wrmsr(msr: u32, value: u64) -> Result<(), Faulted> {
    let mut faulted: u32 = 1;
    // SAFETY: guaranteed by the caller for a value the CPU accepts; a #GP
    // is caught by the exception-table entry and leaves the MSR unchanged.
    unsafe {
        asm!("2: wrmsr", "xor {f:e}, {f:e}", "3:", extable_2_to_3!(),
             f = inout(reg) faulted, in("ecx") msr, in("eax") value as u32,
             in("edx") (value >> 32) as u32, options(nostack));
    }
    if faulted == 0 {
        Ok(())
    } else {
        Err(Faulted)
    }
}

/// Restores DS and ES, which a VM exit loads from the host-state area.
///
/// # Safety
///
/// `ds` and `es` must be the selectors `selectors` read on this thread.
pub(crate) unsafe fn load_ds_es(ds: u16, es: u16) {
    // SAFETY: guaranteed by the caller: the values these registers held.
    unsafe {
        asm!("mov ds, {0:x}", "mov es, {1:x}", in(reg) ds, in(reg) es,
                  options(nostack, preserves_flags))
    };
}

pub(crate) fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV(0) reads XCR0; rvmx requires XSAVE (CR4.OSXSAVE) before
    // calling it.
    unsafe {
        asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi,
                  options(nostack, preserves_flags, nomem))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Sets XCR0.
///
/// # Safety
///
/// `value` must be a valid XCR0 for this CPU, and the host's XCR0 must be
/// restored before the kernel or user space uses extended state again.
pub(crate) unsafe fn xsetbv0(value: u64) {
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("xsetbv", in("ecx") 0, in("eax") value as u32, in("edx") (value >> 32) as u32,
                  options(nostack, preserves_flags))
    };
}

/// Sets XCR0 to a value that came from the guest, catching a #GP should
/// the processor refuse it after all (a check rvmx lacks): the guest's
/// XSETBV must never be able to oops the host.
///
/// # Safety
///
/// As `xsetbv0`, except that a value the CPU refuses is allowed.
pub(crate) unsafe fn try_xsetbv0(value: u64) -> Result<(), Faulted> {
    let mut faulted: u32 = 1;
    // SAFETY: guaranteed by the caller for a value the CPU accepts; a #GP
    // is caught by the exception-table entry, which resumes at label 3
    // with `faulted` still 1 and XCR0 unchanged.
    unsafe {
        asm!("2: xsetbv", "xor {f:e}, {f:e}", "3:", extable_2_to_3!(),
             f = inout(reg) faulted, in("ecx") 0, in("eax") value as u32,
             in("edx") (value >> 32) as u32, options(nostack))
    };
    if faulted == 0 {
        Ok(())
    } else {
        Err(Faulted)
    }
}

/// Saves the extended state components in `mask` into `area`.
///
/// # Safety
///
/// `area` must be a 64-byte aligned XSAVE area large enough for every
/// component of the current XCR0, and the FPU must belong to the caller
/// (between `kernel_fpu_begin` and `kernel_fpu_end`).
pub(crate) unsafe fn xsave(area: *mut u8, mask: u64) {
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("xsave64 [{}]", in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32,
                  options(nostack, preserves_flags))
    };
}

/// Loads the extended state components in `mask` from `area`.
///
/// # Safety
///
/// As for `xsave`, and `area` must hold a valid XSAVE image (one `xsave`
/// wrote, or a zeroed area with a valid header).
pub(crate) unsafe fn xrstor(area: *const u8, mask: u64) {
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("xrstor64 [{}]", in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32,
                  options(nostack, preserves_flags, readonly))
    };
}

/// Makes the VMCS at physical `vmcs` current and active on this CPU.
///
/// # Safety
///
/// The CPU must be in VMX root operation (inside a `RootWindow`), and
/// `vmcs` must be a VMCS region tagged with the revision identifier that is
/// not current on any other CPU.
pub(crate) unsafe fn vmptrld(vmcs: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("vmptrld [{}]", "setc {}", "setz {}", in(reg) &vmcs, out(reg_byte) cf,
             out(reg_byte) zf, options(nostack, readonly));
    }
    vm_result(cf, zf)
}

/// VMPTRST: the current-VMCS pointer of this CPU (`u64::MAX` when no VMCS
/// is current), or `Faulted` where the CPU is not in VMX operation (#UD,
/// caught by the exception-table entry).
///
/// Safe: VMPTRST only stores the pointer into its operand, changes no
/// state, and at CPL 0 in VMX root operation cannot fail; outside VMX
/// operation its #UD is caught, and in VMX non-root operation (rvmx as a
/// nested guest) it exits to the hypervisor below, which emulates it.
pub(crate) fn try_vmptrst() -> Result<u64, Faulted> {
    let mut pointer: u64 = u64::MAX;
    let mut faulted: u32 = 1;
    // SAFETY: the operand is `pointer`, 8 bytes on the stack; a #UD outside
    // VMX operation is caught by the exception-table entry, which resumes
    // at label 3 with `faulted` still 1 and `pointer` unwritten.
    unsafe {
        asm!("2: vmptrst [{p}]", "xor {f:e}, {f:e}", "3:", extable_2_to_3!(),
             p = in(reg) &raw mut pointer, f = inout(reg) faulted, options(nostack));
    }
    if faulted == 0 {
        Ok(pointer)
    } else {
        Err(Faulted)
    }
}

/// Flushes the VMCS at physical `vmcs` to memory and makes it inactive
/// and not current.
///
/// # Safety
///
/// As for `vmptrld`.
pub(crate) unsafe fn vmclear(vmcs: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("vmclear [{}]", "setc {}", "setz {}", in(reg) &vmcs, out(reg_byte) cf,
             out(reg_byte) zf, options(nostack));
    }
    vm_result(cf, zf)
}

/// VMREAD of the field with `encoding` in the current VMCS.
///
/// # Safety
///
/// A VMCS must be current on this CPU.
pub(crate) unsafe fn vmread(encoding: u32) -> Result<u64, VmFail> {
    let (value, cf, zf): (u64, u8, u8);
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("vmread {}, {}", "setc {}", "setz {}", out(reg) value, in(reg) u64::from(encoding),
             out(reg_byte) cf, out(reg_byte) zf, options(nostack, nomem));
    }
    vm_result(cf, zf).map(|()| value)
}

/// VMWRITE of `value` into the field with `encoding` in the current VMCS.
///
/// # Safety
///
/// A VMCS must be current on this CPU, and `value` must not make the host
/// state it describes unsafe to return to.
pub(crate) unsafe fn vmwrite(encoding: u32, value: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller, see above.
    unsafe {
        asm!("vmwrite {}, {}", "setc {}", "setz {}", in(reg) u64::from(encoding), in(reg) value,
             out(reg_byte) cf, out(reg_byte) zf, options(nostack, nomem));
    }
    vm_result(cf, zf)
}

/// INVEPT single-context (type 1) for `eptp`.
///
/// # Safety
///
/// The CPU must be in VMX root operation and support single-context INVEPT.
pub(crate) unsafe fn invept_single(eptp: u64) {
    let desc: [u64; 2] = [eptp, 0];
    // SAFETY: guaranteed by the caller; the descriptor lives on the stack.
    unsafe {
        asm!("invept {}, [{}]", in(reg) 1u64, in(reg) &desc, options(nostack, readonly));
    }
}

/// INVVPID single-context (type 1) for `vpid`.
///
/// # Safety
///
/// The CPU must be in VMX root operation and support single-context
/// INVVPID, and `vpid` must not be 0.
pub(crate) unsafe fn invvpid_single(vpid: u16) {
    let desc: [u64; 2] = [u64::from(vpid), 0];
    // SAFETY: guaranteed by the caller; the descriptor lives on the stack.
    unsafe {
        asm!("invvpid {}, [{}]", in(reg) 1u64, in(reg) &desc, options(nostack, readonly));
    }
}
