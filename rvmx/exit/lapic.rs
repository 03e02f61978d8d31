// SPDX-License-Identifier: GPL-2.0

//! The guest's accesses to its own local APIC, through the xAPIC page
//! (`mmio`) or the x2APIC MSRs (`msr`): what a register write asks of the
//! vCPU beyond the register (`lapic::Effect`).

use crate::{
    lapic::Effect,
    uapi,
    vcpu::{Guest, Vcpu},
};

/// Carries out `effect`; true if it left an exit for user space.
pub(crate) fn apply(vcpu: &Vcpu, g: &Guest, effect: Effect) -> bool {
    // ID, LDR, DFR and the mode are what other senders match against.
    vcpu.mailbox().publish_target(&g.lapic.target());
    match effect {
        Effect::None => false,
        // Even a message for this vCPU goes through its mailbox: the next
        // entry takes it like any other.
        Effect::Send(m) => {
            vcpu.vm.deliver(Some(vcpu.id), &m);
            false
        }
        Effect::LevelEoi(vector) => {
            vcpu.run
                .set_exit(uapi::RVMX_EXIT_IOAPIC_EOI, uapi::rvmx_exit_eoi { vector });
            true
        }
    }
}
