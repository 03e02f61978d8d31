// SPDX-License-Identifier: GPL-2.0

//! User pages pinned for the guest (`pin_user_pages_fast`, FOLL_LONGTERM),
//! unpinned (and marked dirty where the guest could write) when dropped.
//!
//! Pinned pages are charged to the process's locked memory, as KVM's and
//! VFIO's pins are (`account_locked_vm`): RLIMIT_MEMLOCK bounds what one
//! user can pin, unless it has CAP_IPC_LOCK.

use kernel::{bindings, error::to_result, mm::Mm, prelude::*, sync::aref::ARef};

/// Pages pinned per call, so one call never holds a huge array.
const CHUNK: usize = 512;

pub(crate) struct PinnedPages {
    pages: KVVec<*mut bindings::page>,
    writable: bool,
    /// The address space charged for `charged` pages.
    mm: ARef<Mm>,
    charged: usize,
}

// SAFETY: the page pointers are pins owned by this object; any thread may
// read them or unpin them on drop.
unsafe impl Send for PinnedPages {}
// SAFETY: as above: `&self` only reads the pointers.
unsafe impl Sync for PinnedPages {}

impl PinnedPages {
    /// Pins the `count` pages at user address `uaddr` of the calling
    /// process, whose locked memory they are charged to (ENOMEM past its
    /// RLIMIT_MEMLOCK).
    pub(crate) fn pin(uaddr: u64, count: usize, writable: bool) -> Result<Self> {
        let mm: ARef<Mm> = kernel::current!()
            .mm()
            .map(|mm| ARef::from(&**mm))
            .ok_or(EFAULT)?;
        // SAFETY: `mm` is the caller's, held by the reference above.
        to_result(unsafe { bindings::account_locked_vm(mm.as_raw(), count as _, true) })?;
        let pages = KVVec::with_capacity(count, GFP_KERNEL_ACCOUNT);
        // From here on, dropping `this` unpins and uncharges.
        let mut this = Self {
            pages: KVVec::new(),
            writable,
            mm,
            charged: count,
        };
        let mut pages = pages?;
        let flags = bindings::FOLL_LONGTERM | if writable { bindings::FOLL_WRITE } else { 0 };
        let mut buf = [core::ptr::null_mut::<bindings::page>(); CHUNK];
        while pages.len() < count {
            let want = (count - pages.len()).min(CHUNK);
            let addr = uaddr + (pages.len() as u64) * 4096;
            // SAFETY: `buf` has room for `want` page pointers; the address
            // range is the caller's, validated by the kernel itself.
            let got = unsafe {
                bindings::pin_user_pages_fast(
                    addr as usize,
                    want as i32,
                    flags as u32,
                    buf.as_mut_ptr(),
                )
            };
            if got <= 0 {
                // Hand what is pinned so far to `this`, whose drop unpins it.
                this.pages = pages;
                return Err(if got < 0 {
                    Error::from_errno(got)
                } else {
                    EFAULT
                });
            }
            for &page in &buf[..got as usize] {
                // Capacity was reserved for `count` pages.
                pages.push_within_capacity(page).map_err(|_| ENOMEM)?;
            }
        }
        this.pages = pages;
        Ok(this)
    }

    pub(crate) fn pages(&self) -> &[*mut bindings::page] {
        &self.pages
    }
}

impl Drop for PinnedPages {
    fn drop(&mut self) {
        if !self.pages.is_empty() {
            // SAFETY: every pointer was returned pinned by
            // `pin_user_pages_fast` and is unpinned exactly once, here.
            unsafe {
                bindings::unpin_user_pages_dirty_lock(
                    self.pages.as_mut_ptr(),
                    self.pages.len() as _,
                    self.writable,
                )
            };
        }
        // SAFETY: `mm` is held; this returns exactly what `pin` charged.
        // Uncharging cannot fail.
        let _ = unsafe { bindings::account_locked_vm(self.mm.as_raw(), self.charged as _, false) };
    }
}
