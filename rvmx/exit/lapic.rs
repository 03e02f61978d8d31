// SPDX-License-Identifier: GPL-2.0

//! The guest's accesses to its own local APIC, through the xAPIC page
//! (`mmio`) or the x2APIC MSRs (`msr`): what a register write asks of the
//! vCPU beyond the register (`lapic::Effect`).

use crate::{
    lapic::Effect,
    vcpu::{Guest, UserExit, Vcpu},
};

/// Carries out `effect`. An exit it needs (the EOI of a level-triggered
/// interrupt) is reported by the next pre-entry step, once RIP is past the
/// instruction: a VMM that saves the vCPU there sees it complete.
/// (LDR, DFR and SVR changes reach other senders through the mailbox when
/// the pre-entry step publishes the APIC's target, before the next entry.)
pub(crate) fn apply(vcpu: &Vcpu, g: &mut Guest, effect: Effect) {
    match effect {
        Effect::None => {}
        // Even a message for this vCPU goes through its mailbox: the next
        // entry takes it like any other.
        Effect::Send(m) => {
            vcpu.stats.inc(crate::stats::V::IpiSent);
            vcpu.vm.deliver(Some(vcpu.id), &m);
        }
        Effect::LevelEoi(vector) => g.user_exit = Some(UserExit::IoapicEoi(vector)),
    }
}
