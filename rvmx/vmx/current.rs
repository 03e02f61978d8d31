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
        let encoding = field.encoding();
        // SAFETY: this VMCS is current (type invariant).
        match unsafe { instr::vmread(encoding) } {
            Ok(raw) => F::Value::try_from(raw).unwrap_or_default(),
            // rvmx reads only fields its controls give the VMCS: a failure
            // is a bug in rvmx, said once, and reads as 0.
            Err(e) => {
                kernel::pr_warn_once!("VMREAD of field {encoding:#x} failed ({e:?})\n");
                F::Value::default()
            }
        }
    }

    pub(crate) fn write<F: Writable>(&self, field: F, value: F::Value)
    where
        F::Value: Into<u64>,
    {
        let encoding = field.encoding();
        // SAFETY: this VMCS is current (type invariant). Host-state fields
        // are written only with the values of this CPU and thread (see
        // `vcpu::host`), so returning to them after an exit is safe.
        if let Err(e) = unsafe { instr::vmwrite(encoding, value.into()) } {
            // An unsupported field: a bug in rvmx, said once. The field
            // keeps its value and VM entry reports any inconsistency.
            kernel::pr_warn_once!("VMWRITE of field {encoding:#x} failed ({e:?})\n");
        }
    }
}

impl Drop for CurrentVmcs<'_> {
    fn drop(&mut self) {
        // SAFETY: the region is current on this CPU, in the window.
        let _ = unsafe { instr::vmclear(self.phys) };
    }
}
