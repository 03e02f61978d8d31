// SPDX-License-Identifier: GPL-2.0

//! The host side of a VM entry: the host-state fields (per CPU and per
//! entry), and the host state a VM exit does not restore, which rvmx saves
//! before entering and restores after leaving.

use crate::vmx::{
    current::CurrentVmcs,
    instr::{self, DescriptorTable},
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
/// window.
pub(crate) struct SavedHost {
    gdt: DescriptorTable,
    idt: DescriptorTable,
    ds: u16,
    es: u16,
    msrs: [u64; SWITCHED_MSRS.len()],
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
            ds: sel.ds,
            es: sel.es,
            msrs: SWITCHED_MSRS.map(rdmsr),
        }
    }

    /// Loads the guest's values of the switched MSRs.
    pub(crate) fn load_guest_msrs(&self, guest: &[u64; SWITCHED_MSRS.len()]) {
        for (msr, value) in SWITCHED_MSRS.iter().zip(guest) {
            // SAFETY: interrupts are off until `restore`, which puts the
            // host's values back; the guest's were validated when set
            // (canonical addresses), and none is used by the host meanwhile.
            unsafe { instr::wrmsr(*msr, *value) };
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
        // SAFETY: the values saved on this CPU before entering, interrupts
        // still off.
        unsafe {
            instr::lgdt(&self.gdt);
            instr::lidt(&self.idt);
            instr::load_ds_es(self.ds, self.es);
            for (msr, value) in SWITCHED_MSRS.iter().zip(&self.msrs) {
                instr::wrmsr(*msr, *value);
            }
        }
    }
}
