// SPDX-License-Identifier: GPL-2.0

//! MOV to/from debug registers: the guest's DR0-DR7 live in software, away
//! from the host's. DR4 and DR5 are DR6 and DR7 unless CR4.DE makes them
//! raise #UD (SDM Vol. 3, 19.2.2).

use crate::{
    vcpu::{self, entry::Event, Guest},
    vmx::current::CurrentVmcs,
};

use super::{gpr, raise, set_gpr, skip_instruction, Action};

const CR4_DE: u64 = 1 << 3;

pub(super) fn access(vmcs: &CurrentVmcs<'_>, g: &mut Guest, qual: u64) -> Action {
    let (dr, to_dr, reg) = (
        (qual & 7) as usize,
        qual & (1 << 4) == 0,
        ((qual >> 8) & 0xf) as u8,
    );
    let dr = match dr {
        4 | 5 if vcpu::guest_cr4(vmcs) & CR4_DE != 0 => return raise(g, Event::ud()),
        4 | 5 => dr + 2,
        n => n,
    };
    if to_dr {
        let value = gpr(vmcs, g, reg);
        // DR6 and DR7 bits 63:32 are reserved: #GP, as the processor does.
        if dr >= 6 && value >> 32 != 0 {
            return raise(g, Event::gp());
        }
        g.dr[dr] = value;
    } else {
        let v = g.dr[dr];
        set_gpr(vmcs, g, reg, v);
    }
    skip_instruction(vmcs);
    Action::Resume
}
