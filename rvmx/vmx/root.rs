// SPDX-License-Identifier: GPL-2.0

//! VMX root operation on a host CPU, inside an interrupts-off window.
//!
//! Linux 7.3 rewrites CR4 from a per-CPU shadow (on TLB-flush IPIs and context
//! switches) that an out-of-tree module cannot update, so rvmx may hold
//! CR4.VMXE only while interrupts are off. A [`RootWindow`] is one of two
//! modes, chosen when it opens:
//!
//! - [`Mode::Own`]: CR4.VMXE was clear. The window sets VMXE and executes
//!   VMXON on this CPU's region; dropping it executes VMXOFF and restores CR4.
//! - [`Mode::Shared`]: CR4.VMXE was set and VMPTRST succeeded: another
//!   hypervisor (kvm_intel, which on Linux 7.x holds VMX root on every CPU
//!   while loaded) has this CPU in VMX root operation. rvmx runs inside it:
//!   the window saves the current-VMCS pointer (VMPTRST) and leaves CR4
//!   alone; dropping it flushes the translations its guest made (see
//!   [`RootWindow::isolate_guest`]) and makes the saved VMCS current again.
//!
//! Nothing outside a window sees VMX state that rvmx changed.

use core::cell::Cell;

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
    /// CR4.VMXE is set but this CPU is not in VMX operation (VMPTRST
    /// raised #UD): something else owns VMX here, and rvmx can neither
    /// VMXON nor run inside it. (A hypervisor in VMX root operation, such
    /// as kvm_intel, gives a shared window instead.)
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
            Self::Busy => "CR4.VMXE is set but the CPU is not in VMX operation (VMPTRST faults)",
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

/// How the window is in VMX root operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// rvmx's own VMXON; CR4 as the kernel's shadow has it is restored with
    /// VMXOFF at drop.
    Own { saved_cr4: u64 },
    /// Inside another hypervisor's VMX root operation; its current VMCS
    /// (`u64::MAX`: none) is made current again at drop.
    Shared { saved_vmcs: u64 },
}

/// A guest's translation tags: its EPTP and VPID (0: no VPID).
#[derive(Clone, Copy)]
struct Tags {
    eptp: u64,
    vpid: u16,
}

/// This CPU in VMX root operation. Dropping it leaves the CPU as it was
/// before `open`: outside VMX operation with the kernel's CR4 (own mode),
/// or in the other hypervisor's VMX operation with its VMCS current and
/// none of rvmx's guest translations cached (shared mode).
pub(crate) struct RootWindow {
    mode: Mode,
    /// Shared mode: the translations flushed when the guest was let in,
    /// flushed again at drop.
    isolated: Cell<Option<Tags>>,
}

impl RootWindow {
    /// Enters VMX root operation on the current CPU: with VMXON on `region`
    /// where CR4.VMXE is clear, inside the other hypervisor's VMX operation
    /// where it is set and VMPTRST works.
    ///
    /// # Safety
    ///
    /// Interrupts must be off now and stay off until the window is dropped;
    /// `region` must belong to the current CPU and be used by no other window.
    pub(crate) unsafe fn open(caps: &VmxCaps, region: &VmxonRegion) -> Result<Self, RootError> {
        let cr4 = instr::read_cr4();
        if cr4 & CR4_VMXE != 0 {
            // Only in VMX operation does VMPTRST not fault: that is the
            // proof that the VMXE we see belongs to a hypervisor in VMX root
            // operation, whose fixed bits and VMXON are already in force.
            return match instr::try_vmptrst() {
                Ok(saved_vmcs) => Ok(Self {
                    mode: Mode::Shared { saved_vmcs },
                    isolated: Cell::new(None),
                }),
                Err(instr::Faulted) => Err(RootError::Busy),
            };
        }
        // SAFETY: the caller runs on a CPU with VMX (checked at load and
        // below by `Asymmetric`), where IA32_FEATURE_CONTROL exists.
        let feature_control = unsafe { instr::rdmsr(msr::IA32_FEATURE_CONTROL) };
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
            Ok(()) => Ok(Self {
                mode: Mode::Own { saved_cr4: cr4 },
                isolated: Cell::new(None),
            }),
            Err(_) => {
                // SAFETY: restores the value read above, still with
                // interrupts off.
                unsafe { instr::write_cr4(cr4) };
                Err(RootError::VmxonFailed)
            }
        }
    }

    /// Whether this window runs inside another hypervisor's VMX operation.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.mode, Mode::Shared { .. })
    }

    /// Before the first VM entry of a guest tagged `eptp` and `vpid` (0: no
    /// VPID) in this window. In a shared window, flushes every translation
    /// cached under those tags now (the other hypervisor's guests may have
    /// made them: its VPIDs are allocated apart from rvmx's, and EPT pages
    /// get reused), and again when the window is dropped, so that none of
    /// this guest's translations outlive the window for the other
    /// hypervisor's guests to use. Returns whether it flushed: an own
    /// window leaves flushing to the caller's CPU-change logic.
    pub(crate) fn isolate_guest(&self, eptp: u64, vpid: u16) -> bool {
        if !self.is_shared() {
            return false;
        }
        let tags = Tags { eptp, vpid };
        tags.flush();
        self.isolated.set(Some(tags));
        true
    }
}

impl Tags {
    fn flush(self) {
        // SAFETY: only called inside a window (VMX root operation, with
        // interrupts off); rvmx requires single-context INVEPT and INVVPID
        // (checked at load), and VPID 0 is never given to INVVPID.
        unsafe {
            instr::invept_single(self.eptp);
            if self.vpid != 0 {
                instr::invvpid_single(self.vpid);
            }
        }
    }
}

impl Drop for RootWindow {
    fn drop(&mut self) {
        match self.mode {
            Mode::Own { saved_cr4 } => {
                // SAFETY: `open` put this CPU in VMX root operation with
                // interrupts off, and they stay off until this drop returns
                // (its contract). VMXOFF in VMX root operation without SMM
                // cannot fail.
                let _ = unsafe { instr::vmxoff() };
                // SAFETY: restores the CR4 value the kernel's shadow holds,
                // with interrupts still off.
                unsafe { instr::write_cr4(saved_cr4) };
            }
            Mode::Shared { saved_vmcs } => {
                if let Some(tags) = self.isolated.take() {
                    tags.flush();
                }
                // rvmx's VMCS was cleared (`CurrentVmcs`'s drop), which
                // leaves no VMCS current. A window that loaded none (the
                // probe, which may interrupt the other hypervisor between
                // two VMREADs) still has the saved one current and
                // reloads nothing.
                if saved_vmcs != u64::MAX && instr::try_vmptrst() != Ok(saved_vmcs) {
                    // SAFETY: in the other hypervisor's VMX root operation
                    // with interrupts off; `saved_vmcs` was current on this
                    // CPU when the window opened, so it is a valid VMCS
                    // that is active here and on no other CPU.
                    if unsafe { instr::vmptrld(saved_vmcs) }.is_err() {
                        kernel::pr_warn_once!(
                            "VMPTRLD of the other hypervisor's VMCS {saved_vmcs:#x} failed\n"
                        );
                    }
                }
            }
        }
    }
}
