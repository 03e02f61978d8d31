// SPDX-License-Identifier: GPL-2.0

//! Guest CR0/CR4: which bits rvmx owns, and guest writes to them.
//!
//! VMX fixes some CR0/CR4 bits (NE, VMXE) that a guest may want otherwise,
//! and rvmx keeps the guest from making its memory uncacheable (CD/NW).
//! Those bits are in the guest/host masks: the guest reads its own value
//! from the read shadow, and writing them exits to `set_cr0`/`set_cr4`.

use crate::vmx::{
    caps::VmxCaps,
    current::CurrentVmcs,
    vmcs::{Field64, FieldNat, Seg},
};

use super::Vcpu;

const CR0_PE: u64 = 1 << 0;
const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const EFER_LME: u64 = 1 << 8;
pub(crate) const EFER_LMA: u64 = 1 << 10;

/// CR0 bits rvmx owns: NE (fixed by VMX), CD and NW.
pub(crate) const CR0_OWNED: u64 = CR0_NE | CR0_CD | CR0_NW;

/// CR4 bits rvmx owns: those VMX fixes to 1 (VMXE) and those the processor
/// cannot set in VMX operation (reserved or unsupported).
pub(crate) fn cr4_owned(caps: &VmxCaps) -> u64 {
    caps.cr4_fixed0 | !caps.cr4_fixed1
}

/// Why a guest write to a control register must fault (#GP).
pub(crate) struct Invalid;

/// Checks a new guest CR0 against the architectural rules.
fn check_cr0(cr0: u64) -> Result<(), Invalid> {
    let reserved = cr0 >> 32 != 0;
    let pg_without_pe = cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0;
    let nw_without_cd = cr0 & CR0_NW != 0 && cr0 & CR0_CD == 0;
    if reserved || pg_without_pe || nw_without_cd {
        Err(Invalid)
    } else {
        Ok(())
    }
}

/// Sets the guest's CR0 to `cr0` as the guest sees it.
pub(crate) fn set_cr0(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, cr0: u64) {
    let fixed = vcpu.vm.host.caps.cr0_fixed0 & !(CR0_PE | CR0_PG);
    vmcs.write(FieldNat::Cr0ReadShadow, cr0);
    vmcs.write(FieldNat::GuestCr0, (cr0 & !(CR0_CD | CR0_NW)) | fixed);
}

/// A guest write of CR0 (MOV, LMSW, CLTS): #GP on an invalid value.
pub(crate) fn write_cr0(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, cr0: u64) -> Result<(), Invalid> {
    check_cr0(cr0)?;
    let efer = vmcs.read(Field64::GuestIa32Efer);
    let old = guest_cr0(vmcs);
    // Paging cannot be turned off in 64-bit mode (only from compatibility
    // mode): the processor raises #GP. Accepting it would leave an IA-32e
    // guest without paging, which fails the next VM entry.
    let code64 = vmcs.read(Seg::Cs.access_rights()) & (1 << 13) != 0;
    if cr0 & CR0_PG == 0 && efer & EFER_LMA != 0 && code64 {
        return Err(Invalid);
    }
    // Turning paging on with EFER.LME needs PAE, as on hardware.
    if cr0 & CR0_PG != 0
        && old & CR0_PG == 0
        && efer & EFER_LME != 0
        && guest_cr4(vmcs) & (1 << 5) == 0
    {
        return Err(Invalid);
    }
    set_cr0(vcpu, vmcs, cr0);
    set_efer(vcpu, vmcs, efer, cr0);
    Ok(())
}

pub(crate) fn guest_cr0(vmcs: &CurrentVmcs<'_>) -> u64 {
    let owned = CR0_OWNED;
    (vmcs.read(FieldNat::GuestCr0) & !owned) | (vmcs.read(FieldNat::Cr0ReadShadow) & owned)
}

/// Sets the guest's CR4 to `cr4` as the guest sees it.
pub(crate) fn set_cr4(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, cr4: u64) {
    vmcs.write(FieldNat::Cr4ReadShadow, cr4);
    vmcs.write(FieldNat::GuestCr4, cr4 | vcpu.vm.host.caps.cr4_fixed0);
}

/// A guest write of CR4: #GP on bits the processor cannot set, or VMXE
/// (rvmx offers no nested VMX).
pub(crate) fn write_cr4(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, cr4: u64) -> Result<(), Invalid> {
    let caps = &vcpu.vm.host.caps;
    if cr4 & !caps.cr4_fixed1 != 0 || cr4 & caps.cr4_fixed0 != 0 {
        return Err(Invalid);
    }
    set_cr4(vcpu, vmcs, cr4);
    Ok(())
}

pub(crate) fn guest_cr4(vmcs: &CurrentVmcs<'_>) -> u64 {
    let owned = vmcs.read(FieldNat::Cr4GuestHostMask);
    (vmcs.read(FieldNat::GuestCr4) & !owned) | (vmcs.read(FieldNat::Cr4ReadShadow) & owned)
}

/// Sets the guest's EFER, deriving LMA from LME and CR0.PG, and the
/// "IA-32e mode guest" entry control from LMA, as VM entry requires.
pub(crate) fn set_efer(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, efer: u64, cr0: u64) {
    let long = efer & EFER_LME != 0 && cr0 & CR0_PG != 0;
    let efer = if long {
        efer | EFER_LMA
    } else {
        efer & !EFER_LMA
    };
    vmcs.write(Field64::GuestIa32Efer, efer);
    let entry = vcpu.vm.controls.entry
        | if long {
            crate::vmx::controls::ENTRY_IA32E_MODE_GUEST
        } else {
            0
        };
    vmcs.write(crate::vmx::vmcs::Field32::EntryControls, entry);
}

/// A guest write of EFER (already checked), with LMA following CR0.PG.
pub(crate) fn write_efer(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, efer: u64) {
    set_efer(vcpu, vmcs, efer, guest_cr0(vmcs));
}
