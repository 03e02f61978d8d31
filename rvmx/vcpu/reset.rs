// SPDX-License-Identifier: GPL-2.0

//! A fresh VMCS: the controls, and guest state as after power-on (SDM Vol. 3,
//! 10.1.1, Table 10-1), so real-mode code at F000:FFF0 runs through
//! unrestricted guest.

use crate::vmx::{
    current::CurrentVmcs,
    vmcs::{Field16, Field32, Field64, FieldNat, Seg},
};

use super::{apicv, cr, Vcpu};

/// Guest PAT after reset.
pub(crate) const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
const CR0_RESET: u64 = 0x6000_0010;
const DR7_RESET: u64 = 0x400;

/// Access rights: present read/write data; present accessed code; LDT;
/// busy 16-bit TSS (VM entry wants a busy TSS type in TR).
const AR_DATA: u32 = 0x93;
const AR_CODE: u32 = 0x9b;
const AR_LDT: u32 = 0x82;
const AR_TSS: u32 = 0x8b;

pub(crate) fn program(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>) {
    let c = &vcpu.vm.controls;
    vmcs.write(Field32::PinBasedControls, c.pin);
    vmcs.write(Field32::ProcBasedControls, c.proc);
    vmcs.write(Field32::ProcBasedControls2, c.proc2);
    vmcs.write(Field32::ExitControls, c.exit);
    vmcs.write(Field32::EntryControls, c.entry);
    apicv::program(vcpu, vmcs);
    vmcs.write(Field32::ExceptionBitmap, 0);
    vmcs.write(Field32::PageFaultErrorCodeMask, 0);
    vmcs.write(Field32::PageFaultErrorCodeMatch, 0);
    vmcs.write(Field32::Cr3TargetCount, 0);
    vmcs.write(Field32::ExitMsrStoreCount, 0);
    vmcs.write(Field32::ExitMsrLoadCount, 0);
    vmcs.write(Field32::EntryMsrLoadCount, 0);
    vmcs.write(Field32::EntryInterruptionInfo, 0);
    vmcs.write(Field64::VmcsLinkPointer, u64::MAX);
    vmcs.write(Field64::EptPointer, vcpu.vm.eptp);
    vmcs.write(Field64::TscOffset, vcpu.vm.tsc_offset);
    if c.uses_vpid() {
        vmcs.write(Field16::Vpid, vcpu.vpid);
    }
    vmcs.write(FieldNat::Cr0GuestHostMask, cr::CR0_OWNED);
    vmcs.write(
        FieldNat::Cr4GuestHostMask,
        cr::cr4_owned(&vcpu.vm.host.caps),
    );

    for seg in Seg::ALL {
        let (selector, base, ar) = match seg {
            Seg::Cs => (0xf000, 0xffff_0000, AR_CODE),
            Seg::Ldtr => (0, 0, AR_LDT),
            Seg::Tr => (0, 0, AR_TSS),
            _ => (0, 0, AR_DATA),
        };
        vmcs.write(seg.selector(), selector);
        vmcs.write(seg.base(), base);
        vmcs.write(seg.limit(), 0xffff);
        vmcs.write(seg.access_rights(), ar);
    }
    vmcs.write(FieldNat::GuestGdtrBase, 0);
    vmcs.write(Field32::GuestGdtrLimit, 0xffff);
    vmcs.write(FieldNat::GuestIdtrBase, 0);
    vmcs.write(Field32::GuestIdtrLimit, 0xffff);

    cr::set_cr0(vcpu, vmcs, CR0_RESET);
    cr::set_cr4(vcpu, vmcs, 0);
    vmcs.write(FieldNat::GuestCr3, 0);
    vmcs.write(Field64::GuestIa32Efer, 0);
    vmcs.write(Field64::GuestIa32Pat, PAT_DEFAULT);
    vmcs.write(FieldNat::GuestDr7, DR7_RESET);
    vmcs.write(Field64::GuestIa32Debugctl, 0);
    vmcs.write(FieldNat::GuestRip, 0xfff0);
    vmcs.write(FieldNat::GuestRsp, 0);
    vmcs.write(FieldNat::GuestRflags, 0x2);
    vmcs.write(FieldNat::GuestPendingDebugExceptions, 0);
    vmcs.write(Field32::GuestInterruptibility, 0);
    vmcs.write(Field32::GuestActivityState, 0);
    vmcs.write(Field32::GuestSysenterCs, 0);
    vmcs.write(FieldNat::GuestSysenterEsp, 0);
    vmcs.write(FieldNat::GuestSysenterEip, 0);
}
