// SPDX-License-Identifier: GPL-2.0

//! VMCALL: a hypercall for the VMM (`RVMX_EXIT_HYPERCALL`), whose result
//! goes to RAX at the next `RVMX_RUN`. VMCALL works at any privilege level,
//! so the flags tell the VMM whether the guest's kernel made the call.

use crate::{
    uapi,
    vcpu::{self, regs::RAX, Guest, Pending, Vcpu},
    vmx::{current::CurrentVmcs, segment::Attributes, vmcs::Seg},
};

use super::{cpl, skip_instruction, Action};

pub(super) fn handle(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let r = &g.regs.gpr;
    let args = [r[3], r[1], r[2], r[6], r[7], r[8]];
    let cs = Attributes::from_access_rights(vmcs.read(Seg::Cs.access_rights()));
    let efer = vmcs.read(crate::vmx::vmcs::Field64::GuestIa32Efer);
    let mut flags = 0;
    if efer & vcpu::EFER_LMA != 0 && cs.l != 0 {
        flags |= uapi::RVMX_EXIT_HYPERCALL_LONG_MODE;
    }
    if cpl(vmcs) != 0 {
        flags |= uapi::RVMX_EXIT_HYPERCALL_USER;
    }
    skip_instruction(vmcs);
    g.pending = Pending::Hypercall;
    vcpu.run.set_exit(
        uapi::RVMX_EXIT_HYPERCALL,
        uapi::rvmx_exit_hypercall {
            nr: r[RAX],
            args,
            ret: 0,
            flags: u64::from(flags),
        },
    );
    Action::User
}
