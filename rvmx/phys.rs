// SPDX-License-Identifier: GPL-2.0

//! Physical addresses of kernel memory, for the structures the processor
//! reads by physical address (VMXON and VMCS regions, EPT tables).

use kernel::prelude::*;

extern "C" {
    fn rvmx_virt_to_phys(addr: *const core::ffi::c_void) -> u64;
    fn rvmx_page_to_phys(page: *mut core::ffi::c_void) -> u64;
}

/// The physical address of `obj`, which must live in the kernel's direct
/// map (kmalloc memory).
pub(crate) fn virt_to_phys<T>(obj: &T) -> u64 {
    // SAFETY: `obj` is a live reference; `virt_to_phys` only does arithmetic
    // on direct-map addresses, which kmalloc memory is.
    unsafe { rvmx_virt_to_phys((obj as *const T).cast()) }
}

/// The physical address of `page`.
pub(crate) fn page_to_phys(page: *mut kernel::bindings::page) -> u64 {
    // SAFETY: `page_to_phys` only does arithmetic on the page pointer;
    // callers pass pages they hold (allocated or pinned).
    unsafe { rvmx_page_to_phys(page.cast()) }
}

/// A zeroed, 4 KiB aligned page of kernel memory for the processor: a VMXON
/// or VMCS region.
#[repr(C, align(4096))]
#[derive(Zeroable)]
pub(crate) struct PageBuf(pub(crate) [u8; 4096]);

impl PageBuf {
    /// A region tagged with the VMCS revision identifier in its first
    /// 4 bytes, as VMXON and VMPTRLD require.
    pub(crate) fn vmx_region(revision: u32) -> Result<KBox<Self>> {
        let mut page = KBox::<Self>::init(pin_init::init_zeroed(), GFP_KERNEL_ACCOUNT)?;
        for (dst, src) in page.0.iter_mut().zip(revision.to_ne_bytes()) {
            *dst = src;
        }
        Ok(page)
    }
}
