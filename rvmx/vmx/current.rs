// SPDX-License-Identifier: GPL-2.0

//! The VMCS current on this CPU, with typed field access.
//!
//! A `CurrentVmcs` exists only inside a `RootWindow` (interrupts off, VMX
//! root operation) after VMPTRLD of its region, and VMCLEARs the region when
//! dropped, so the region is never left active on a CPU when rvmx leaves
//! the window, and can be loaded on another CPU next time.

use kernel::prelude::*;

use super::{
    instr::{self, VmFail},
    root::RootWindow,
    vmcs::{Readable, Writable},
};
use crate::phys::{virt_to_phys, PageBuf};

pub(crate) struct CurrentVmcs<'w> {
    phys: u64,
    _window: &'w RootWindow,
}

impl<'w> CurrentVmcs<'w> {
    /// Makes `region` current on this CPU.
    ///
    /// `&mut` on the region: no other CPU can have it loaded at the same
    /// time.
    pub(crate) fn load(window: &'w RootWindow, region: &'w mut PageBuf) -> Result<Self, VmFail> {
        let phys = virt_to_phys(region);
        // SAFETY: the window proves VMX root operation with interrupts off;
        // the region is tagged (`PageBuf::vmx_region`) and exclusively
        // borrowed, so not current on any other CPU.
        unsafe { instr::vmptrld(phys)? };
        Ok(Self {
            phys,
            _window: window,
        })
    }

    /// VMCLEARs `region` (not current) on this CPU: its launch state
    /// becomes clear, as a region must be before its first VMPTRLD.
    pub(crate) fn clear(_window: &RootWindow, region: &mut PageBuf) -> Result<(), VmFail> {
        // SAFETY: the window proves VMX root operation with interrupts off;
        // the region is tagged and exclusively borrowed, so not active on
        // any other CPU.
        unsafe { instr::vmclear(virt_to_phys(region)) }
    }

    pub(crate) fn read<F: Readable>(&self, field: F) -> F::Value
    where
        F::Value: TryFrom<u64> + Default,
    {
        // SAFETY: this VMCS is current (type invariant). A field the CPU does
        // not support reads as 0; rvmx only uses fields of its controls.
        let raw = unsafe { instr::vmread(field.encoding()) }.unwrap_or(0);
        F::Value::try_from(raw).unwrap_or_default()
    }

    pub(crate) fn write<F: Writable>(&self, field: F, value: F::Value)
    where
        F::Value: Into<u64>,
    {
        // SAFETY: this VMCS is current (type invariant). Host-state fields
        // are written only with the values of this CPU and thread (see
        // `vcpu::host`), so returning to them after an exit is safe.
        // A failed VMWRITE (unsupported field) leaves the field unchanged
        // and VM entry then reports the inconsistency.
        let _ = unsafe { instr::vmwrite(field.encoding(), value.into()) };
    }
}

impl Drop for CurrentVmcs<'_> {
    fn drop(&mut self) {
        // SAFETY: the region is current on this CPU, in the window.
        let _ = unsafe { instr::vmclear(self.phys) };
    }
}
