// SPDX-License-Identifier: GPL-2.0

//! RDMSR and WRMSR: the MSRs rvmx virtualizes, the local APIC's among them
//! (IA32_APIC_BASE, IA32_TSC_DEADLINE, the x2APIC registers). Any other
//! raises #GP in the guest, as on a processor without that MSR, or goes to
//! user space if the VMM asked for it.

use crate::{
    arch::{canonical, msr::*},
    uapi,
    vcpu::{
        self,
        entry::Event,
        regs::{RAX, RCX, RDX},
        Guest, Pending, Vcpu, SWITCHED_MSRS,
    },
    vmx::{
        current::CurrentVmcs,
        instr,
        vmcs::{Field32, Field32Ro, Field64, FieldNat},
    },
};

use super::{lapic, raise, skip_instruction, Action};

/// IA32_MISC_ENABLE as the guest reads it: fast strings.
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// A valid PAT: each of the 8 entries a defined memory type (0, 1, 4-7).
fn valid_pat(pat: u64) -> bool {
    (0..8).all(|i| matches!((pat >> (8 * i)) & 0xff, 0 | 1 | 4..=7))
}

fn is_x2apic(msr: u32) -> bool {
    (X2APIC_FIRST..=X2APIC_LAST).contains(&msr)
}

pub(crate) fn read(vmcs: &CurrentVmcs<'_>, g: &Guest, msr: u32) -> Option<u64> {
    if let Some(i) = SWITCHED_MSRS.iter().position(|&m| m == msr) {
        return Some(g.msrs[i]);
    }
    Some(match msr {
        EFER => vmcs.read(Field64::GuestIa32Efer),
        FS_BASE => vmcs.read(FieldNat::GuestFsBase),
        GS_BASE => vmcs.read(FieldNat::GuestGsBase),
        SYSENTER_CS => u64::from(vmcs.read(Field32::GuestSysenterCs)),
        SYSENTER_ESP => vmcs.read(FieldNat::GuestSysenterEsp),
        SYSENTER_EIP => vmcs.read(FieldNat::GuestSysenterEip),
        PAT => vmcs.read(Field64::GuestIa32Pat),
        TSC => g.tsc(),
        APIC_BASE => g.lapic.base(),
        TSC_DEADLINE => g.lapic.tsc_deadline(),
        MISC_ENABLE => MISC_ENABLE_FAST_STRING,
        PLATFORM_ID | BIOS_SIGN_ID | MTRR_CAP => 0,
        MTRR_DEF_TYPE => g.mtrr_def_type,
        _ => return None,
    })
}

/// Whether rvmx virtualizes `msr` (accesses to others raise #GP, or go to
/// user space if it asked for them).
fn known(vmcs: &CurrentVmcs<'_>, g: &Guest, msr: u32) -> bool {
    read(vmcs, g, msr).is_some()
}

/// Whether the write was accepted; `false` raises #GP. The values of the
/// MSRs rvmx later loads with WRMSR are checked as the processor checks
/// them, so the load cannot fault.
pub(crate) fn write(
    vcpu: &Vcpu,
    vmcs: &CurrentVmcs<'_>,
    g: &mut Guest,
    msr: u32,
    value: u64,
) -> bool {
    if let Some(i) = SWITCHED_MSRS.iter().position(|&m| m == msr) {
        let ok = match msr {
            // Reserved upper halves.
            TSC_AUX | SFMASK => value >> 32 == 0,
            STAR => true,
            // SYSCALL targets and the SWAPGS base.
            _ => canonical(value),
        };
        if ok {
            g.msrs[i] = value;
        }
        return ok;
    }
    match msr {
        EFER => {
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
        FS_BASE | GS_BASE | SYSENTER_ESP | SYSENTER_EIP if !canonical(value) => return false,
        FS_BASE => vmcs.write(FieldNat::GuestFsBase, value),
        GS_BASE => vmcs.write(FieldNat::GuestGsBase, value),
        SYSENTER_CS => vmcs.write(Field32::GuestSysenterCs, value as u32),
        SYSENTER_ESP => vmcs.write(FieldNat::GuestSysenterEsp, value),
        SYSENTER_EIP => vmcs.write(FieldNat::GuestSysenterEip, value),
        PAT if valid_pat(value) => vmcs.write(Field64::GuestIa32Pat, value),
        MTRR_DEF_TYPE => g.mtrr_def_type = value & 0xcff,
        APIC_BASE => {
            if g.lapic.set_base(value).is_err() {
                return false;
            }
            vcpu.mailbox().publish_target(&g.lapic.target());
        }
        TSC_DEADLINE => g.lapic.set_tsc_deadline(value),
        // Writes the guest may make that change nothing here.
        MISC_ENABLE | BIOS_SIGN_ID => {}
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
        return raise(g, Event::gp());
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
pub(crate) fn complete_user(vcpu: &Vcpu, g: &mut Guest, write: bool, insn_len: u64) {
    let m: uapi::rvmx_exit_msr = vcpu.run.exit_details();
    if m.error != 0 {
        g.raise(Event::gp());
        return;
    }
    if !write {
        g.regs.gpr[RAX] = m.data & 0xffff_ffff;
        g.regs.gpr[RDX] = m.data >> 32;
    }
    g.rip_advance = insn_len;
}

fn set_edx_eax(g: &mut Guest, value: u64) {
    g.regs.gpr[RAX] = value & 0xffff_ffff;
    g.regs.gpr[RDX] = value >> 32;
}

pub(super) fn rdmsr(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let msr = g.regs.gpr[RCX] as u32;
    let value = if is_x2apic(msr) {
        // In xAPIC mode the x2APIC MSRs do not exist: #GP.
        match g.lapic.read_msr(msr, g.tsc()) {
            Ok(v) => v,
            Err(_) => return raise(g, Event::gp()),
        }
    } else {
        match read(vmcs, g, msr) {
            Some(v) => v,
            None => return unknown(vcpu, vmcs, g, msr, None),
        }
    };
    set_edx_eax(g, value);
    skip_instruction(vmcs);
    Action::Resume
}

pub(super) fn wrmsr(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let r = &g.regs.gpr;
    let (msr, value) = (r[RCX] as u32, (r[RDX] << 32) | (r[RAX] & 0xffff_ffff));
    if is_x2apic(msr) {
        let now = g.tsc();
        let Ok(effect) = g.lapic.write_msr(msr, value, now) else {
            return raise(g, Event::gp());
        };
        skip_instruction(vmcs);
        lapic::apply(vcpu, g, effect);
        return Action::Resume;
    }
    if !known(vmcs, g, msr) {
        return unknown(vcpu, vmcs, g, msr, Some(value));
    }
    if !write(vcpu, vmcs, g, msr, value) {
        return raise(g, Event::gp());
    }
    if SWITCHED_MSRS.contains(&msr) {
        // The window runs with the guest's values of these loaded: the
        // new one takes effect now (and is what the window's end saves).
        // SAFETY: in the run loop's window, whose end restores the host's
        // values; `write` checked the value as the processor would, and a
        // value it refuses anyway faults into the fixup, not the host.
        if unsafe { instr::try_wrmsr(msr, value) }.is_err() {
            return raise(g, Event::gp());
        }
    }
    skip_instruction(vmcs);
    Action::Resume
}
