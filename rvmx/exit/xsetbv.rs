// SPDX-License-Identifier: GPL-2.0

//! XSETBV: the guest's XCR0, checked as the processor checks it
//! (`arch::xcr0::valid`) against the host's, and applied at once in the
//! window, where the guest's extended state is loaded.

use crate::{
    arch::xcr0,
    vcpu::{
        entry::Event,
        regs::{RAX, RCX, RDX},
        Guest,
    },
    vmx::current::CurrentVmcs,
};

use super::{cpl, raise, skip_instruction, Action};

pub(super) fn handle(vmcs: &CurrentVmcs<'_>, g: &mut Guest) -> Action {
    let r = &g.regs.gpr;
    let value = (r[RDX] << 32) | (r[RAX] & 0xffff_ffff);
    // The host's XCR0 as read before entering: the hardware XCR0 now is
    // the guest's.
    if !xcr0::valid(r[RCX] as u32, value, cpl(vmcs), g.fpu.host_xcr0) {
        return raise(g, Event::gp());
    }
    // A value the processor still refuses is the guest's #GP, not the
    // host's oops.
    if g.fpu.set_xcr0(value).is_err() {
        return raise(g, Event::gp());
    }
    skip_instruction(vmcs);
    Action::Resume
}
