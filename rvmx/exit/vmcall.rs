// SPDX-License-Identifier: GPL-2.0

//! VMCALL: a hypercall for the VMM (`RVMX_EXIT_HYPERCALL`), whose result
//! goes to RAX at the next `RVMX_RUN`.

use crate::{
    uapi,
    vcpu::{regs::RAX, Guest, Pending, Vcpu},
    vmx::current::CurrentVmcs,
};

use super::{skip_instruction, Action};

pub(super) fn handle(vcpu: &Vcpu, vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let r = &g.regs.gpr;
    let args = [r[3], r[1], r[2], r[6], r[7], r[8]];
    skip_instruction(vmcs);
    g.pending = Pending::Hypercall;
    vcpu.run.set_exit(
        uapi::RVMX_EXIT_HYPERCALL,
        uapi::rvmx_exit_hypercall {
            nr: r[RAX],
            args,
            ret: 0,
            flags: 0,
        },
    );
    Action::User
}
