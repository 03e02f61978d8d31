// SPDX-License-Identifier: GPL-2.0

//! The run area: one page shared with the VMM (`mmap` of the vCPU fd) that
//! holds `struct rvmx_run` and, at `RVMX_RUN_DATA_OFFSET`, PIO data.
//!
//! User space may write any byte of it at any time, so every read here is
//! a single volatile load whose value is validated where it is used, and
//! nothing read from it is trusted twice.

use core::{mem::offset_of, ptr};

use kernel::{page::Page, prelude::*};

use crate::uapi::{self, rvmx_run};

extern "C" {
    fn rvmx_page_address(page: *mut core::ffi::c_void) -> *mut core::ffi::c_void;
}

pub(crate) const SIZE: usize = 4096;
const DATA_OFFSET: usize = uapi::RVMX_RUN_DATA_OFFSET as usize;
pub(crate) const DATA_SIZE: usize = uapi::RVMX_RUN_DATA_SIZE as usize;

const _: () = assert!(size_of::<rvmx_run>() <= DATA_OFFSET);
const _: () = assert!(DATA_OFFSET + DATA_SIZE == SIZE);

pub(crate) struct RunArea {
    page: Page,
    base: *mut u8,
}

// SAFETY: `base` points into `page`, which this object owns; accesses are
// volatile and the vCPU's state lock serializes rvmx's own use.
unsafe impl Send for RunArea {}
// SAFETY: as above.
unsafe impl Sync for RunArea {}

impl RunArea {
    pub(crate) fn new() -> Result<Self> {
        let page = Page::alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO)?;
        // SAFETY: a page from `alloc_page` without __GFP_HIGHMEM is in the
        // direct map, so it has a permanent kernel address.
        let base = unsafe { rvmx_page_address(page.as_ptr().cast()) }.cast::<u8>();
        Ok(Self { page, base })
    }

    pub(crate) fn page(&self) -> &Page {
        &self.page
    }

    fn read<T: Copy>(&self, offset: usize) -> T {
        debug_assert!(offset + size_of::<T>() <= SIZE);
        // SAFETY: `offset` is a field offset within the page (callers use
        // `offset_of!` on `rvmx_run`), and plain integers are valid for any
        // bits user space may have left.
        unsafe { ptr::read_volatile(self.base.add(offset).cast::<T>()) }
    }

    fn write<T: Copy>(&self, offset: usize, value: T) {
        debug_assert!(offset + size_of::<T>() <= SIZE);
        // SAFETY: as in `read`; the page is ours to write.
        unsafe { ptr::write_volatile(self.base.add(offset).cast::<T>(), value) }
    }

    pub(crate) fn immediate_exit(&self) -> bool {
        self.read::<u8>(offset_of!(rvmx_run, immediate_exit)) != 0
    }

    /// The exit reason last set (for the statistics).
    pub(crate) fn exit_reason(&self) -> u32 {
        self.read::<u32>(offset_of!(rvmx_run, exit_reason))
    }

    pub(crate) fn request_interrupt_window(&self) -> bool {
        self.read::<u8>(offset_of!(rvmx_run, request_interrupt_window)) != 0
    }

    /// Writes the exit reason and the exit's details (`T` is the union
    /// member of that reason).
    pub(crate) fn set_exit<T: Copy>(&self, reason: u32, details: T) {
        let union = offset_of!(rvmx_run, __bindgen_anon_1);
        self.write(union, [0u8; 256]);
        self.write(union, details);
        self.write(offset_of!(rvmx_run, exit_reason), reason);
    }

    /// The interrupt state KVM reports with every exit: RFLAGS.IF, whether
    /// an interrupt could be injected now, CR8 and IA32_APIC_BASE.
    pub(crate) fn set_interrupt_state(&self, if_flag: bool, ready: bool, cr8: u64, apic_base: u64) {
        self.write(offset_of!(rvmx_run, if_flag), u8::from(if_flag));
        self.write(
            offset_of!(rvmx_run, ready_for_interrupt_injection),
            u8::from(ready),
        );
        self.write(offset_of!(rvmx_run, cr8), cr8);
        self.write(offset_of!(rvmx_run, apic_base), apic_base);
    }

    /// The exit details the VMM may have filled in (MMIO read data,
    /// hypercall result), read once.
    pub(crate) fn exit_details<T: Copy>(&self) -> T {
        self.read(offset_of!(rvmx_run, __bindgen_anon_1))
    }

    /// Writes `bytes` at `at` in the data section (what does not fit is
    /// dropped).
    pub(crate) fn write_data(&self, at: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate().take(DATA_SIZE.saturating_sub(at)) {
            self.write(DATA_OFFSET + at + i, b);
        }
    }

    /// Reads `out.len()` bytes at `at` in the data section (zeros past its
    /// end).
    pub(crate) fn read_data(&self, at: usize, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            *b = if at + i < DATA_SIZE {
                self.read(DATA_OFFSET + at + i)
            } else {
                0
            };
        }
    }

    pub(crate) const fn data_offset() -> u64 {
        DATA_OFFSET as u64
    }
}
