// SPDX-License-Identifier: GPL-2.0

//! VMX root operation on a host CPU, inside an interrupts-off window.
//!
//! Linux 7.3 rewrites CR4 from a per-CPU shadow (on TLB-flush IPIs and context
//! switches) that an out-of-tree module cannot update, so rvmx may hold
//! CR4.VMXE only while interrupts are off: a [`RootWindow`] sets VMXE and
//! executes VMXON when opened, and executes VMXOFF and restores CR4 when
//! dropped. Nothing outside a window sees VMX state.

use kernel::prelude::*;

use crate::phys::{virt_to_phys, PageBuf};

use super::{
    caps::VmxCaps,
    instr::{self, CR4_VMXE},
    msr,
};

/// Why a CPU cannot enter VMX root operation.
///
/// The discriminants start at 2 so that per-CPU probe results fit in one
/// `u32` with 0 (not probed) and 1 (usable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum RootError {
    /// CR4.VMXE is already set: another hypervisor (kvm_intel) holds VMX
    /// root operation on this CPU.
    Busy = 2,
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled.
    DisabledByFirmware,
    /// This CPU lacks VMX or reports capabilities other than the CPU rvmx
    /// was loaded on.
    Asymmetric,
    /// CR0 or CR4 violates the VMX fixed bits.
    FixedBits,
    /// VMXON failed although its preconditions held.
    VmxonFailed,
    /// The CPU came online after rvmx was loaded and has no VMXON region.
    NoRegion,
}

impl RootError {
    const ALL: [Self; 6] = [
        Self::Busy,
        Self::DisabledByFirmware,
        Self::Asymmetric,
        Self::FixedBits,
        Self::VmxonFailed,
        Self::NoRegion,
    ];

    pub(crate) fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|&e| e as u32 == code)
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Self::Busy => "another hypervisor (kvm_intel?) holds VMX root operation",
            Self::DisabledByFirmware => "VMX is disabled by firmware (IA32_FEATURE_CONTROL)",
            Self::Asymmetric => "its VMX capabilities differ from the other CPUs'",
            Self::FixedBits => "CR0/CR4 violate the VMX fixed bits",
            Self::VmxonFailed => "VMXON failed",
            Self::NoRegion => "it came online after rvmx was loaded",
        }
    }

    /// The errno for VM work refused because of this error.
    pub(crate) fn errno(self) -> Error {
        match self {
            Self::Busy => EBUSY,
            Self::NoRegion => ENODEV,
            _ => EIO,
        }
    }
}

/// A 4 KiB VMXON region, tagged with the VMCS revision identifier.
pub(crate) struct VmxonRegion {
    page: KBox<PageBuf>,
}

impl VmxonRegion {
    pub(crate) fn new(revision: u32) -> Result<Self> {
        Ok(Self {
            page: PageBuf::vmx_region(revision)?,
        })
    }
}

/// This CPU in VMX root operation. Dropping it leaves VMX operation and
/// restores CR4.
pub(crate) struct RootWindow {
    saved_cr4: u64,
}

impl RootWindow {
    /// Enters VMX root operation on the current CPU using `region`.
    ///
    /// # Safety
    ///
    /// Interrupts must be off now and stay off until the window is dropped;
    /// `region` must belong to the current CPU and be used by no other window.
    pub(crate) unsafe fn open(caps: &VmxCaps, region: &VmxonRegion) -> Result<Self, RootError> {
        // SAFETY: the caller runs on a CPU with VMX (checked at load and
        // below by `Asymmetric`), where IA32_FEATURE_CONTROL exists.
        let feature_control = unsafe { instr::rdmsr(msr::IA32_FEATURE_CONTROL) };
        let cr4 = instr::read_cr4();
        if cr4 & CR4_VMXE != 0 {
            return Err(RootError::Busy);
        }
        let wanted = msr::FEATURE_CONTROL_LOCKED | msr::FEATURE_CONTROL_VMX_OUTSIDE_SMX;
        if feature_control & wanted != wanted {
            return Err(RootError::DisabledByFirmware);
        }
        if !caps.cr0_allowed(instr::read_cr0()) || !caps.cr4_allowed(cr4 | CR4_VMXE) {
            return Err(RootError::FixedBits);
        }
        // SAFETY: interrupts are off until the window is dropped (caller),
        // and VMXE is a bit the kernel's CR4 shadow does not track; `Drop`
        // restores `cr4` before interrupts come back.
        unsafe { instr::write_cr4(cr4 | CR4_VMXE) };
        // SAFETY: VMXE is set, the fixed bits were checked above, and the
        // region is page-aligned, tagged and owned by this CPU (caller).
        match unsafe { instr::vmxon(virt_to_phys(&*region.page)) } {
            Ok(()) => Ok(Self { saved_cr4: cr4 }),
            Err(_) => {
                // SAFETY: restores the value read above, still with
                // interrupts off.
                unsafe { instr::write_cr4(cr4) };
                Err(RootError::VmxonFailed)
            }
        }
    }
}

impl Drop for RootWindow {
    fn drop(&mut self) {
        // SAFETY: `open` put this CPU in VMX root operation with interrupts
        // off, and they stay off until this drop returns (its contract).
        // VMXOFF in VMX root operation without SMM cannot fail.
        let _ = unsafe { instr::vmxoff() };
        // SAFETY: restores the CR4 value the kernel's shadow holds, with
        // interrupts still off.
        unsafe { instr::write_cr4(self.saved_cr4) };
    }
}
