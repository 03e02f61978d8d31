// SPDX-License-Identifier: GPL-2.0

//! MOV to/from debug registers: the guest's DR0-DR7 live in software, away
//! from the host's.

use crate::{vcpu::Guest, vmx::current::CurrentVmcs};

use super::{gpr, set_gpr, skip_instruction, Action};

pub(super) fn access(vmcs: &CurrentVmcs<'_>, g: &mut Guest, qual: u64) -> Action {
    let (dr, to_dr, reg) = (
        (qual & 7) as usize,
        qual & (1 << 4) == 0,
        ((qual >> 8) & 0xf) as u8,
    );
    if to_dr {
        g.dr[dr] = gpr(vmcs, g, reg);
    } else {
        let v = g.dr[dr];
        set_gpr(vmcs, g, reg, v);
    }
    skip_instruction(vmcs);
    Action::Resume
}
