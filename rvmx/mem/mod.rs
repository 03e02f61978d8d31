// SPDX-License-Identifier: GPL-2.0

//! A VM's guest memory: the slots userspace gave it, pinned and mapped in
//! the VM's EPT.

mod pinned;
pub(crate) mod rules;

use kernel::prelude::*;

use crate::{
    ept::{entry, Ept},
    phys::page_to_phys,
    uapi,
};

use pinned::PinnedPages;
use rules::{Change, Refusal, Region};

struct Slot {
    region: Region,
    pages: PinnedPages,
}

impl Slot {
    fn readonly(&self) -> bool {
        self.region.flags & uapi::RVMX_MEM_READONLY != 0
    }
}

/// The slots of a VM and the EPT built from them.
pub(crate) struct Memory {
    slots: KVec<Slot>,
    pub(crate) ept: Ept,
    /// A page rvmx itself maps in the EPT (the APIC-access page), which no
    /// slot may cover.
    private: Option<u64>,
}

/// Pages a slot change unmapped from the EPT. They are still pinned: the
/// caller drops them only after flushing cached translations (INVEPT on
/// every CPU a vCPU of the VM may run on), so that no guest access can reach
/// them once they are unpinned.
pub(crate) type Unmapped = Option<PinnedPages>;

impl Memory {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            slots: KVec::new(),
            ept: Ept::new()?,
            private: None,
        })
    }

    /// Maps the host page `hpa` at `gpa` for rvmx's own use, read/write;
    /// slots covering `gpa` are refused from now on (EEXIST).
    pub(crate) fn map_private(&mut self, gpa: u64, hpa: u64) -> Result {
        self.ept.map(gpa, hpa, entry::READ | entry::WRITE)?;
        self.private = Some(gpa);
        Ok(())
    }

    /// Applies `RVMX_SET_USER_MEMORY_REGION`. Whatever the result, the
    /// returned pages must be flushed before they are dropped.
    pub(crate) fn set_region(
        &mut self,
        req: &uapi::rvmx_userspace_memory_region,
    ) -> (Result, Unmapped) {
        let req = Region {
            slot: req.slot,
            flags: req.flags,
            gpa: req.guest_phys_addr,
            size: req.memory_size,
            uaddr: req.userspace_addr,
        };
        let mut existing = KVec::new();
        for s in &self.slots {
            if let Err(e) = existing.push(s.region, GFP_KERNEL) {
                return (Err(e.into()), None);
            }
        }
        let change = match rules::check(&req, &existing) {
            Ok(change) => change,
            Err(Refusal::Invalid) => return (Err(EINVAL), None),
            Err(Refusal::Overlap) => return (Err(EEXIST), None),
        };
        // Only now: `check` refused ranges that wrap around.
        if let Some(gpa) = self.private {
            // As a slot of one page, for the overlap check.
            let page = Region {
                slot: u32::MAX,
                flags: 0,
                gpa,
                size: 4096,
                uaddr: 0,
            };
            if change != Change::Delete && req.overlaps(&page) {
                return (Err(EEXIST), None);
            }
        }
        match change {
            Change::Create => self.add(req),
            Change::Delete => (Ok(()), self.remove(req.slot)),
            Change::SetFlags => {
                // The slot is re-pinned with its new access. If that fails
                // it stays deleted, and the error says so.
                let old = self.remove(req.slot);
                let (result, partial) = self.add(req);
                (result, old.or(partial))
            }
        }
    }

    /// Pins and maps a new slot. On failure, returns what it had mapped.
    fn add(&mut self, region: Region) -> (Result, Unmapped) {
        let count = (region.size / 4096) as usize;
        let readonly = region.flags & uapi::RVMX_MEM_READONLY != 0;
        if let Err(e) = self.slots.reserve(1, GFP_KERNEL) {
            return (Err(e.into()), None);
        }
        let pages = match PinnedPages::pin(region.uaddr, count, !readonly) {
            Ok(pages) => pages,
            Err(e) => return (Err(e), None),
        };
        let perms = if readonly {
            entry::READ | entry::EXECUTE
        } else {
            entry::READ | entry::WRITE | entry::EXECUTE
        };
        for (i, &page) in pages.pages().iter().enumerate() {
            let gpa = region.gpa + i as u64 * 4096;
            if let Err(e) = self.ept.map(gpa, page_to_phys(page), perms) {
                self.unmap_range(region.gpa, i as u64);
                return (Err(e), Some(pages));
            }
        }
        match self.slots.push_within_capacity(Slot { region, pages }) {
            Ok(()) => (Ok(()), None),
            // Unreachable: capacity was reserved above.
            Err(e) => {
                self.unmap_range(region.gpa, count as u64);
                (Err(ENOMEM), Some(e.0.pages))
            }
        }
    }

    fn unmap_range(&mut self, gpa: u64, pages: u64) {
        for i in 0..pages {
            self.ept.unmap(gpa + i * 4096);
        }
    }

    /// Unmaps the slot and returns its pages, still pinned.
    fn remove(&mut self, slot: u32) -> Unmapped {
        let i = self.slots.iter().position(|s| s.region.slot == slot)?;
        let s = self.slots.remove(i).ok()?;
        self.unmap_range(s.region.gpa, s.region.size / 4096);
        Some(s.pages)
    }

    /// The slot holding `gpa`: its user address for `gpa`, and whether the
    /// guest may write there.
    pub(crate) fn translate(&self, gpa: u64) -> Option<(u64, bool)> {
        self.slots
            .iter()
            .find(|s| gpa >= s.region.gpa && gpa - s.region.gpa < s.region.size)
            .map(|s| (s.region.uaddr + (gpa - s.region.gpa), !s.readonly()))
    }
}
