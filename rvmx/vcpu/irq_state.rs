// SPDX-License-Identifier: GPL-2.0

//! The ioctls that save and restore a vCPU's interrupt state, as KVM's:
//! the local APIC's registers (`RVMX_GET/SET_LAPIC`), the events an entry
//! would deliver and what blocks them (`RVMX_GET/SET_VCPU_EVENTS`), and
//! whether the vCPU runs (`RVMX_GET/SET_MP_STATE`).

use kernel::prelude::*;

use crate::{ioctl, lapic::STATE_SIZE, uapi, vmx::vmcs::Field32};

use super::{
    entry::{Event, EventKind, BLOCKING_MOV_SS, BLOCKING_NMI, BLOCKING_STI},
    MpState, Vcpu,
};

const _: () = assert!(STATE_SIZE == uapi::RVMX_APIC_REG_SIZE as usize);

impl Vcpu {
    pub(super) fn get_lapic(&self, arg: usize) -> Result<isize> {
        let st = self.state.lock();
        let img = st.guest.lapic.save(st.guest.tsc());
        let state = uapi::rvmx_lapic_state {
            regs: img.map(|b| b as _),
        };
        drop(st);
        ioctl::write_arg(arg, &state)?;
        Ok(0)
    }

    pub(super) fn set_lapic(&self, arg: usize) -> Result<isize> {
        let state: uapi::rvmx_lapic_state = ioctl::read_arg(arg)?;
        let img = state.regs.map(|b| b as u8);
        let mut st = self.state.lock();
        let now = st.guest.tsc();
        st.guest.lapic.restore(&img, now).map_err(|_| EINVAL)?;
        self.mailbox().publish_target(&st.guest.lapic.target());
        Ok(0)
    }

    pub(super) fn get_vcpu_events(&self, arg: usize) -> Result<isize> {
        let mut st = self.state.lock();
        let intr = self.with_vmcs(&mut st, |_, vmcs, _| {
            vmcs.read(Field32::GuestInterruptibility)
        })?;
        let g = &st.guest;
        // SAFETY: all-zero is a valid `rvmx_vcpu_events` (plain integers).
        let mut ev: uapi::rvmx_vcpu_events = unsafe { core::mem::zeroed() };
        if let Some(e) = g.exception {
            ev.exception.pending = 1;
            ev.exception.nr = e.vector();
            if let Some(code) = e.error_code() {
                ev.exception.has_error_code = 1;
                ev.exception.error_code = code;
            }
        }
        match g.reinject.map(|e| (e.kind(), e)) {
            Some((EventKind::Exception, e)) => {
                ev.exception.injected = 1;
                ev.exception.nr = e.vector();
                if let Some(code) = e.error_code() {
                    ev.exception.has_error_code = 1;
                    ev.exception.error_code = code;
                }
            }
            Some((EventKind::External, e)) => {
                ev.interrupt.injected = 1;
                ev.interrupt.nr = e.vector();
            }
            Some((EventKind::Nmi, _)) => ev.nmi.injected = 1,
            // Software interrupts and exceptions: re-executed, not saved.
            Some((EventKind::Software, _)) | None => {}
        }
        ev.interrupt.shadow = (u32::from(intr & BLOCKING_STI != 0)
            * uapi::RVMX_INTERRUPT_SHADOW_STI
            | u32::from(intr & BLOCKING_MOV_SS != 0) * uapi::RVMX_INTERRUPT_SHADOW_MOV_SS)
            as u8;
        ev.nmi.pending = u8::from(g.nmi_pending);
        ev.nmi.masked = u8::from(intr & BLOCKING_NMI != 0);
        ev.sipi_vector = g.sipi.map_or(0, u32::from);
        drop(st);
        ioctl::write_arg(arg, &ev)?;
        Ok(0)
    }

    pub(super) fn set_vcpu_events(&self, arg: usize) -> Result<isize> {
        let ev: uapi::rvmx_vcpu_events = ioctl::read_arg(arg)?;
        let x = &ev.exception;
        let shadow = u32::from(ev.interrupt.shadow);
        let both_shadows = uapi::RVMX_INTERRUPT_SHADOW_STI | uapi::RVMX_INTERRUPT_SHADOW_MOV_SS;
        let unsupported = ev.flags != 0
            || ev.interrupt.soft != 0
            || ev.nmi.pad != 0
            || [
                ev.smi.smm,
                ev.smi.pending,
                ev.smi.smm_inside_nmi,
                ev.smi.latched_init,
            ] != [0; 4]
            || ev.triple_fault.pending != 0
            || ev.reserved != [0; 26]
            || ev.exception_has_payload != 0
            || ev.exception_payload != 0;
        // One event at most is in delivery; an exception vector is < 32; the
        // two shadows cannot be at once (VM entry would refuse it).
        let invalid = (x.injected != 0 || x.pending != 0) && x.nr >= 32
            || u8::from(x.injected != 0) + ev.interrupt.injected.min(1) + ev.nmi.injected.min(1)
                > 1
            || x.injected != 0 && x.pending != 0
            || shadow & !both_shadows != 0
            || shadow == both_shadows
            || ev.sipi_vector > 0xff;
        if unsupported || invalid {
            return Err(EINVAL);
        }
        let error_code = (x.has_error_code != 0).then_some(x.error_code);
        let mut st = self.state.lock();
        self.with_vmcs(&mut st, |_, vmcs, g| {
            let intr = vmcs.read(Field32::GuestInterruptibility)
                & !(BLOCKING_STI | BLOCKING_MOV_SS | BLOCKING_NMI);
            let mut blocking = intr;
            if shadow & uapi::RVMX_INTERRUPT_SHADOW_STI != 0 {
                blocking |= BLOCKING_STI;
            }
            if shadow & uapi::RVMX_INTERRUPT_SHADOW_MOV_SS != 0 {
                blocking |= BLOCKING_MOV_SS;
            }
            if ev.nmi.masked != 0 {
                blocking |= BLOCKING_NMI;
            }
            vmcs.write(Field32::GuestInterruptibility, blocking);
            g.exception = (x.pending != 0).then(|| Event::exception(x.nr, error_code));
            g.reinject = if x.injected != 0 {
                Some(Event::exception(x.nr, error_code))
            } else if ev.interrupt.injected != 0 {
                Some(Event::external(ev.interrupt.nr))
            } else if ev.nmi.injected != 0 {
                Some(Event::nmi())
            } else {
                None
            };
            g.nmi_pending = ev.nmi.pending != 0;
            g.sipi = (g.mp == MpState::WaitForSipi && ev.sipi_vector != 0)
                .then_some(ev.sipi_vector as u8);
        })?;
        Ok(0)
    }

    pub(super) fn get_mp_state(&self, arg: usize) -> Result<isize> {
        let mp = match self.state.lock().guest.mp {
            MpState::Runnable => uapi::RVMX_MP_STATE_RUNNABLE,
            MpState::Halted => uapi::RVMX_MP_STATE_HALTED,
            MpState::WaitForSipi => uapi::RVMX_MP_STATE_INIT_RECEIVED,
        };
        ioctl::write_arg(arg, &uapi::rvmx_mp_state { mp_state: mp })?;
        Ok(0)
    }

    pub(super) fn set_mp_state(&self, arg: usize) -> Result<isize> {
        let s: uapi::rvmx_mp_state = ioctl::read_arg(arg)?;
        let mp = match s.mp_state {
            uapi::RVMX_MP_STATE_RUNNABLE => MpState::Runnable,
            uapi::RVMX_MP_STATE_HALTED => MpState::Halted,
            uapi::RVMX_MP_STATE_INIT_RECEIVED => MpState::WaitForSipi,
            _ => return Err(EINVAL),
        };
        let mut st = self.state.lock();
        st.guest.mp = mp;
        // A restored halt ends on an interrupt, as after STI; HLT.
        st.guest.halted_with_if = true;
        Ok(0)
    }
}
