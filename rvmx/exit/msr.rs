// SPDX-License-Identifier: GPL-2.0

//! RDMSR and WRMSR: the MSRs rvmx virtualizes. Any other raises #GP in the
//! guest, as on a processor without that MSR.

use crate::{
    uapi,
    vcpu::{
        self,
        regs::{RAX, RCX, RDX},
        Guest, Pending, Vcpu, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE, MSR_PAT, MSR_SYSENTER_CS,
        MSR_SYSENTER_EIP, MSR_SYSENTER_ESP, SWITCHED_MSRS,
    },
    vmx::{
        current::CurrentVmcs,
        vmcs::{Field32, Field32Ro, Field64, FieldNat},
    },
};

use super::{inject_gp, skip_instruction, Action, APIC_BASE_DEFAULT};

const MSR_TSC: u32 = 0x10;
const MSR_PLATFORM_ID: u32 = 0x17;
const MSR_APIC_BASE: u32 = 0x1b;
const MSR_BIOS_SIGN_ID: u32 = 0x8b;
const MSR_MTRR_CAP: u32 = 0xfe;
const MSR_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

/// IA32_MISC_ENABLE as the guest reads it: fast strings.
const MISC_ENABLE_FAST_STRING: u64 = 1;

fn canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

/// A valid PAT: each of the 8 entries a defined memory type (0, 1, 4-7).
fn valid_pat(pat: u64) -> bool {
    (0..8).all(|i| matches!((pat >> (8 * i)) & 0xff, 0 | 1 | 4..=7))
}

pub(crate) fn read(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &Guest, msr: u32) -> Option<u64> {
    if let Some(i) = SWITCHED_MSRS.iter().position(|&m| m == msr) {
        return Some(g.msrs[i]);
    }
    Some(match msr {
        MSR_EFER => vmcs.read(Field64::GuestIa32Efer),
        MSR_FS_BASE => vmcs.read(FieldNat::GuestFsBase),
        MSR_GS_BASE => vmcs.read(FieldNat::GuestGsBase),
        MSR_SYSENTER_CS => u64::from(vmcs.read(Field32::GuestSysenterCs)),
        MSR_SYSENTER_ESP => vmcs.read(FieldNat::GuestSysenterEsp),
        MSR_SYSENTER_EIP => vmcs.read(FieldNat::GuestSysenterEip),
        MSR_PAT => vmcs.read(Field64::GuestIa32Pat),
        MSR_TSC => crate::vmx::instr::rdtsc(),
        MSR_APIC_BASE => APIC_BASE_DEFAULT & !(u64::from(vcpu.id != 0) << 8),
        MSR_MISC_ENABLE => MISC_ENABLE_FAST_STRING,
        MSR_PLATFORM_ID | MSR_BIOS_SIGN_ID | MSR_MTRR_CAP => 0,
        MSR_MTRR_DEF_TYPE => g.mtrr_def_type,
        _ => return None,
    })
}

/// Whether rvmx virtualizes `msr` (accesses to others raise #GP, or go to
/// user space if it asked for them).
fn known(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &Guest, msr: u32) -> bool {
    read(vcpu, vmcs, g, msr).is_some()
}

/// Whether the write was accepted; `false` raises #GP.
pub(crate) fn write(
    vcpu: &Vcpu,
    vmcs: &CurrentVmcs<'_>,
    g: &mut Guest,
    msr: u32,
    value: u64,
) -> bool {
    if let Some(i) = SWITCHED_MSRS.iter().position(|&m| m == msr) {
        // STAR and TSC_AUX take any value with the reserved bits clear;
        // the others are addresses or masks the host would fault on if
        // not canonical.
        let ok = match msr {
            vcpu::MSR_TSC_AUX => value >> 32 == 0,
            vcpu::MSR_STAR | vcpu::MSR_SFMASK => true,
            _ => canonical(value),
        };
        if ok {
            g.msrs[i] = value;
        }
        return ok;
    }
    match msr {
        MSR_EFER => {
            if value & !vcpu::EFER_VALID != 0 {
                return false;
            }
            let old = vmcs.read(Field64::GuestIa32Efer);
            let cr0 = vcpu::guest_cr0(vmcs);
            // LME cannot change while paging is on; LMA is read-only.
            if cr0 & (1 << 31) != 0 && (old ^ value) & (1 << 8) != 0 {
                return false;
            }
            vcpu::write_efer(
                vcpu,
                vmcs,
                (value & !vcpu::EFER_LMA) | (old & vcpu::EFER_LMA),
            );
        }
        MSR_FS_BASE | MSR_GS_BASE | MSR_SYSENTER_ESP | MSR_SYSENTER_EIP if !canonical(value) => {
            return false
        }
        MSR_FS_BASE => vmcs.write(FieldNat::GuestFsBase, value),
        MSR_GS_BASE => vmcs.write(FieldNat::GuestGsBase, value),
        MSR_SYSENTER_CS => vmcs.write(Field32::GuestSysenterCs, value as u32),
        MSR_SYSENTER_ESP => vmcs.write(FieldNat::GuestSysenterEsp, value),
        MSR_SYSENTER_EIP => vmcs.write(FieldNat::GuestSysenterEip, value),
        MSR_PAT if valid_pat(value) => vmcs.write(Field64::GuestIa32Pat, value),
        MSR_MTRR_DEF_TYPE => g.mtrr_def_type = value & 0xcff,
        // Writes the guest may make that change nothing here.
        MSR_MISC_ENABLE | MSR_BIOS_SIGN_ID | MSR_APIC_BASE => {}
        _ => return false,
    }
    true
}

/// Sends an access to an MSR rvmx does not virtualize to user space, if it
/// asked for them (`RVMX_SET_USER_MSR_EXITS`); otherwise #GP.
fn unknown(
    vcpu: &Vcpu,
    vmcs: &CurrentVmcs<'_>,
    g: &mut Guest,
    msr: u32,
    write: Option<u64>,
) -> Action {
    if !vcpu.vm.user_msr_exits() {
        return inject_gp(vmcs);
    }
    g.pending = Pending::UserMsr {
        write: write.is_some(),
        insn_len: u64::from(vmcs.read(Field32Ro::ExitInstructionLength)),
    };
    let reason = if write.is_some() {
        uapi::RVMX_EXIT_X86_WRMSR
    } else {
        uapi::RVMX_EXIT_X86_RDMSR
    };
    vcpu.run.set_exit(
        reason,
        uapi::rvmx_exit_msr {
            error: 0,
            pad: [0; 7],
            reason: uapi::RVMX_MSR_EXIT_REASON_UNKNOWN,
            index: msr,
            data: write.unwrap_or(0),
        },
    );
    Action::User
}

/// Finishes an MSR access user space handled: #GP if it set `error`, else
/// the value of a read goes to EDX:EAX; either way RIP moves on only if
/// the access succeeded.
pub(super) fn complete_user(vcpu: &Vcpu, g: &mut Guest, write: bool, insn_len: u64) {
    let m: uapi::rvmx_exit_msr = vcpu.run.exit_details();
    if m.error != 0 {
        g.inject_gp = true;
        return;
    }
    if !write {
        g.regs.gpr[RAX] = m.data & 0xffff_ffff;
        g.regs.gpr[RDX] = m.data >> 32;
    }
    g.rip_advance = insn_len;
}

pub(super) fn rdmsr(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let msr = g.regs.gpr[RCX] as u32;
    match read(vcpu, vmcs, g, msr) {
        Some(value) => {
            g.regs.gpr[RAX] = value & 0xffff_ffff;
            g.regs.gpr[RDX] = value >> 32;
            skip_instruction(vmcs);
            Action::Resume
        }
        None => unknown(vcpu, vmcs, g, msr, None),
    }
}

pub(super) fn wrmsr(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let r = &g.regs.gpr;
    let (msr, value) = (r[RCX] as u32, (r[RDX] << 32) | (r[RAX] & 0xffff_ffff));
    if !known(vcpu, vmcs, g, msr) {
        return unknown(vcpu, vmcs, g, msr, Some(value));
    }
    if write(vcpu, vmcs, g, msr, value) {
        skip_instruction(vmcs);
        Action::Resume
    } else {
        inject_gp(vmcs)
    }
}
