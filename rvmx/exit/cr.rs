// SPDX-License-Identifier: GPL-2.0

//! MOV to/from CR0, CR4 and CR8, CLTS and LMSW. CR8 is the local APIC's
//! TPR (bits 7:4): the guest's CR8 exits, so it never reaches the host's.

use crate::{
    vcpu::{self, entry::Event, Guest, Vcpu},
    vmx::current::CurrentVmcs,
};

use super::{gpr, raise, reason::CrAccess, set_gpr, skip_instruction, Action};

pub(super) fn access(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest, a: CrAccess) -> Action {
    let cr0 = vcpu::guest_cr0(vmcs);
    let result = match a {
        CrAccess::MovTo { cr: 0, gpr: r } => vcpu::write_cr0(vcpu, vmcs, gpr(vmcs, g, r)),
        CrAccess::MovTo { cr: 4, gpr: r } => vcpu::write_cr4(vcpu, vmcs, gpr(vmcs, g, r)),
        CrAccess::MovTo { cr: 8, gpr: r } => {
            let v = gpr(vmcs, g, r);
            if v > 0xf {
                return raise(g, Event::gp());
            }
            g.lapic.set_tpr((v as u32) << 4);
            Ok(())
        }
        CrAccess::MovFrom { cr: 8, gpr: r } => {
            let v = u64::from(g.lapic.tpr() >> 4);
            set_gpr(vmcs, g, r, v);
            Ok(())
        }
        CrAccess::Clts => vcpu::write_cr0(vcpu, vmcs, cr0 & !(1 << 3)),
        // LMSW writes CR0 bits 3:0 but cannot clear PE.
        CrAccess::Lmsw(src) => vcpu::write_cr0(vcpu, vmcs, (cr0 & !0xe) | u64::from(src & 0xf)),
        // CR3 accesses do not exit with EPT; nothing else exists.
        _ => return raise(g, Event::ud()),
    };
    match result {
        Ok(()) => {
            skip_instruction(vmcs);
            Action::Resume
        }
        Err(_) => raise(g, Event::gp()),
    }
}
