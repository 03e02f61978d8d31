// SPDX-License-Identifier: GPL-2.0

//! The guest's FPU/SSE/AVX state, kept apart from the host's.
//!
//! Around each VMX window rvmx owns the FPU (`kernel_fpu_begin`, which
//! saves the VMM thread's user state); inside it, it loads the guest's XSAVE
//! image and XCR0, and on the way out saves the image and restores the
//! host's XCR0. So nothing the guest leaves in vector registers reaches the
//! VMM process or the host kernel.

use kernel::prelude::*;

use crate::vmx::instr;

extern "C" {
    fn kernel_fpu_begin_mask(mask: u32);
    fn kernel_fpu_end();
}

const KFPU_387_MXCSR: u32 = 0b11;
/// XCR0 after reset: x87 only.
pub(crate) const XCR0_RESET: u64 = 1;
/// Offset of MXCSR in the legacy XSAVE region.
const MXCSR_OFFSET: usize = 24;
const MXCSR_RESET: u32 = 0x1f80;

/// The FPU belongs to rvmx (and interrupts may still be on) while this
/// guard lives.
pub(crate) struct KernelFpu(());

impl KernelFpu {
    pub(crate) fn begin() -> Self {
        // SAFETY: called from process context (the RUN ioctl), not nested;
        // `Drop` ends the section.
        unsafe { kernel_fpu_begin_mask(KFPU_387_MXCSR) };
        Self(())
    }
}

impl Drop for KernelFpu {
    fn drop(&mut self) {
        // SAFETY: ends the section `begin` started, with interrupts on.
        unsafe { kernel_fpu_end() };
    }
}

/// An XSAVE image: 4 KiB, which `GuestFpu::new` checks covers the host's
/// XCR0 (CPUID.(EAX=0DH,ECX=0):EBX).
#[repr(C, align(64))]
#[derive(Zeroable)]
struct XsaveArea([u8; 4096]);

pub(crate) struct GuestFpu {
    area: KBox<XsaveArea>,
    /// The guest's XCR0 (XSETBV).
    xcr0: u64,
    /// The host's XCR0, read when the guest's state was loaded: what an
    /// XSETBV exit checks against (XGETBV then would read the guest's).
    pub(crate) host_xcr0: u64,
}

impl GuestFpu {
    pub(crate) fn new() -> Result<Self> {
        let (_, size, _, _) = instr::cpuid(0xd, 0);
        if size as usize > size_of::<XsaveArea>() {
            // Once: each vCPU a user tries to create would say it again.
            kernel::pr_err_once!(
                "the host's XSAVE state ({size} bytes) exceeds rvmx's 4 KiB area\n"
            );
            return Err(ENODEV);
        }
        let mut area = KBox::<XsaveArea>::init(pin_init::init_zeroed(), GFP_KERNEL_ACCOUNT)?;
        // An all-zero XSAVE header means every component is in its initial
        // state, except MXCSR, which XRSTOR loads from the image.
        for (dst, src) in area.0[MXCSR_OFFSET..]
            .iter_mut()
            .zip(MXCSR_RESET.to_ne_bytes())
        {
            *dst = src;
        }
        Ok(Self {
            area,
            xcr0: XCR0_RESET,
            host_xcr0: instr::xgetbv0(),
        })
    }

    /// Loads the guest's state and XCR0; returns the host's XCR0 for `save`.
    /// Inside the window, with the FPU owned (`KernelFpu`).
    pub(crate) fn load(&mut self) -> u64 {
        let host_xcr0 = instr::xgetbv0();
        self.host_xcr0 = host_xcr0;
        // SAFETY: the area is 64-byte aligned, large enough for the host's
        // XCR0 (checked in `new`) and holds an image XSAVE wrote or the
        // valid initial one; the FPU is ours (`KernelFpu`). The guest's XCR0
        // was validated by XSETBV emulation against the host's.
        unsafe {
            instr::xrstor(self.area.0.as_ptr(), host_xcr0);
            instr::xsetbv0(self.xcr0);
        }
        host_xcr0
    }

    /// The guest's XSETBV of `xcr0` (checked by `exit::xsetbv::valid`),
    /// inside the window where the guest's state is loaded: it takes effect
    /// now. Fails, with XCR0 unchanged, if the processor refuses the value.
    pub(crate) fn set_xcr0(&mut self, xcr0: u64) -> Result<(), instr::Faulted> {
        // SAFETY: `save` restores the host's XCR0 before the window ends; a
        // value the CPU refuses faults into the fixup instead of the host.
        unsafe { instr::try_xsetbv0(xcr0) }?;
        self.xcr0 = xcr0;
        Ok(())
    }

    /// Saves the guest's state and restores the host's XCR0.
    pub(crate) fn save(&mut self, host_xcr0: u64) {
        // SAFETY: as in `load`; the host's XCR0 is what `load` read.
        unsafe {
            instr::xsetbv0(host_xcr0);
            instr::xsave(self.area.0.as_mut_ptr(), host_xcr0);
        }
    }
}
