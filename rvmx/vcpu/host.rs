// SPDX-License-Identifier: GPL-2.0

//! The host side of a VM entry: the host-state fields (per CPU and per
//! entry), and the host state a VM exit does not restore, which rvmx saves
//! before entering and restores after leaving.

use crate::vmx::{
    current::CurrentVmcs,
    instr::{self, DescriptorTable, Selectors},
    vmcs::{Field16, Field32, Field64, FieldNat},
};

use super::regs::rvmx_vmexit;
use crate::arch::msr::*;

/// The MSRs the guest has its own values of and that neither VM entry nor
/// VM exit switches: rvmx loads the guest's after saving the host's, and
/// restores the host's before interrupts come back. None is used by the
/// host while interrupts are off (SYSCALL targets, SWAPGS base, RDTSCP).
pub(crate) const SWITCHED_MSRS: [u32; 6] = [STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, TSC_AUX];

/// Host state saved before entering and restored after the last exit of a
/// window: what a VM exit sets to fixed values (SDM Vol. 3, 28.5) or does
/// not switch, and the task depends on.
pub(crate) struct SavedHost {
    gdt: DescriptorTable,
    idt: DescriptorTable,
    sel: Selectors,
    fs_base: u64,
    /// A VM exit sets DR7 to 0x400 and clears IA32_DEBUGCTL: the host's
    /// hardware breakpoints and branch tracing (LBR, BTF) would be lost.
    dr7: u64,
    /// `None` where the MSR does not exist (some emulators).
    debugctl: Option<u64>,
    msrs: [u64; SWITCHED_MSRS.len()],
}

/// DR7 after reset and after a VM exit: no breakpoint enabled.
const DR7_RESET: u64 = 0x400;

extern "C" {
    /// Loads GS's selector without touching the kernel's GS base (SWAPGS
    /// around it, interrupts off): the kernel's `asm_load_gs_index`.
    fn asm_load_gs_index(selector: u32);
    /// The TR limit a VM exit cut to 0x67 is reloaded (`shim.c`).
    fn rvmx_invalidate_tss_limit();
}

/// Reads the TSS base out of the GDT descriptor that TR selects.
fn tr_base(gdt: &DescriptorTable, tr: u16) -> u64 {
    let desc = (gdt.base + u64::from(tr & !7)) as *const u32;
    // SAFETY: SGDT returned this CPU's GDT, which is mapped and holds the
    // 16-byte TSS descriptor TR selects (loaded by the kernel at boot).
    let (w0, w1, w2) = unsafe {
        (
            core::ptr::read_volatile(desc),
            core::ptr::read_volatile(desc.add(1)),
            core::ptr::read_volatile(desc.add(2)),
        )
    };
    u64::from(w0 >> 16)
        | (u64::from(w1 & 0xff) << 16)
        | (u64::from(w1 >> 24) << 24)
        | (u64::from(w2) << 32)
}

impl SavedHost {
    /// Writes the host-state fields for this CPU and this thread, and saves
    /// what the exit will not restore. Interrupts are off (inside the window).
    pub(crate) fn save_and_program(vmcs: &CurrentVmcs<'_>) -> Self {
        let sel = instr::selectors();
        let gdt = instr::sgdt();
        let idt = instr::sidt();
        // SAFETY (rdmsr): all of these MSRs exist on a CPU with VMX in
        // 64-bit mode.
        let rdmsr = |msr| unsafe { instr::rdmsr(msr) };

        vmcs.write(FieldNat::HostCr0, instr::read_cr0());
        vmcs.write(FieldNat::HostCr3, instr::read_cr3());
        vmcs.write(FieldNat::HostCr4, instr::read_cr4());
        vmcs.write(Field16::HostCsSelector, sel.cs & !7);
        vmcs.write(Field16::HostSsSelector, sel.ss & !7);
        // The user's DS/ES (RPL 3) are not valid host selectors; the exit
        // loads 0 and `restore` puts them back. FS and GS keep selector 0
        // with their bases from the MSRs: the user's TLS and the kernel's
        // per-CPU base.
        vmcs.write(Field16::HostDsSelector, 0);
        vmcs.write(Field16::HostEsSelector, 0);
        vmcs.write(Field16::HostFsSelector, 0);
        vmcs.write(Field16::HostGsSelector, 0);
        vmcs.write(Field16::HostTrSelector, sel.tr & !7);
        vmcs.write(FieldNat::HostFsBase, rdmsr(FS_BASE));
        vmcs.write(FieldNat::HostGsBase, rdmsr(GS_BASE));
        vmcs.write(FieldNat::HostTrBase, tr_base(&gdt, sel.tr));
        vmcs.write(FieldNat::HostGdtrBase, gdt.base);
        vmcs.write(FieldNat::HostIdtrBase, idt.base);
        vmcs.write(Field32::HostSysenterCs, rdmsr(SYSENTER_CS) as u32);
        vmcs.write(FieldNat::HostSysenterEsp, rdmsr(SYSENTER_ESP));
        vmcs.write(FieldNat::HostSysenterEip, rdmsr(SYSENTER_EIP));
        vmcs.write(Field64::HostIa32Efer, rdmsr(EFER));
        vmcs.write(Field64::HostIa32Pat, rdmsr(PAT));
        vmcs.write(FieldNat::HostRip, rvmx_vmexit as *const () as u64);

        Self {
            gdt,
            idt,
            sel,
            fs_base: rdmsr(FS_BASE),
            dr7: instr::read_dr7(),
            debugctl: instr::try_rdmsr(DEBUGCTL).ok(),
            msrs: SWITCHED_MSRS.map(rdmsr),
        }
    }

    /// Loads the guest's values of the switched MSRs.
    pub(crate) fn load_guest_msrs(&self, guest: &[u64; SWITCHED_MSRS.len()]) {
        for (msr, value) in SWITCHED_MSRS.iter().zip(guest) {
            // SAFETY: interrupts are off until `restore`, which puts the
            // host's values back, and none is used by the host meanwhile.
            // The guest's were checked as WRMSR checks them when set; a
            // value the CPU refuses anyway is not loaded (a #GP caught),
            // rather than oopsing the host.
            let _ = unsafe { instr::try_wrmsr(*msr, *value) };
        }
    }

    /// Restores what the VM exits of the window changed, before interrupts
    /// are enabled again, after saving the guest's IA32_KERNEL_GS_BASE: its
    /// SWAPGS changes that MSR without an exit (the other switched MSRs
    /// change only through WRMSR, which exits).
    pub(crate) fn restore(&self, guest: &mut [u64; SWITCHED_MSRS.len()]) {
        if let Some(i) = SWITCHED_MSRS.iter().position(|&m| m == KERNEL_GS_BASE) {
            // SAFETY: the MSR exists on every x86-64 CPU.
            guest[i] = unsafe { instr::rdmsr(KERNEL_GS_BASE) };
        }
        let sel = &self.sel;
        // SAFETY: the values saved on this CPU and thread before entering,
        // interrupts still off, in the order the kernel loads them: LDT
        // and segment selectors (which reload bases from descriptors), then
        // the bases (FS_BASE; KERNEL_GS_BASE among the switched MSRs).
        unsafe {
            instr::lgdt(&self.gdt);
            instr::lidt(&self.idt);
            rvmx_invalidate_tss_limit();
            instr::load_ds_es(sel.ds, sel.es);
            if sel.ldtr != 0 {
                instr::lldt(sel.ldtr);
            }
            if sel.gs != 0 {
                asm_load_gs_index(u32::from(sel.gs));
            }
            if sel.fs != 0 {
                instr::load_fs(sel.fs);
                instr::wrmsr(FS_BASE, self.fs_base);
            }
            for (msr, value) in SWITCHED_MSRS.iter().zip(&self.msrs) {
                instr::wrmsr(*msr, *value);
            }
            if self.dr7 != DR7_RESET {
                instr::write_dr7(self.dr7);
            }
            if let Some(debugctl) = self.debugctl.filter(|&v| v != 0) {
                instr::wrmsr(DEBUGCTL, debugctl);
            }
        }
    }
}
