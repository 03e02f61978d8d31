// SPDX-License-Identifier: GPL-2.0

//! A VM's extended page tables: guest-physical to host-physical, 4 KiB
//! leaves, 4 levels.
//!
//! Tables are only ever added while the VM lives and freed with it, so a
//! vCPU walking them on another CPU never sees a freed table. Entries are
//! written with single 64-bit stores. The caller flushes cached
//! translations (INVEPT) after removing or narrowing a mapping.

pub(crate) mod entry;

use kernel::prelude::*;

use crate::phys::virt_to_phys;

#[repr(C, align(4096))]
#[derive(Zeroable)]
struct Table([u64; entry::ENTRIES]);

/// A table and, above the leaf level, the tables its entries point to.
struct Node {
    table: KBox<Table>,
    children: KVec<Option<KBox<Node>>>,
}

impl Node {
    fn new(level: u32) -> Result<KBox<Self>> {
        let table = KBox::<Table>::init(pin_init::init_zeroed(), GFP_KERNEL_ACCOUNT)?;
        let mut children = KVec::new();
        if level > 1 {
            children.reserve(entry::ENTRIES, GFP_KERNEL_ACCOUNT)?;
            for _ in 0..entry::ENTRIES {
                children.push(None, GFP_KERNEL_ACCOUNT)?;
            }
        }
        Ok(KBox::new(Self { table, children }, GFP_KERNEL_ACCOUNT)?)
    }

    fn set(&mut self, i: usize, value: u64) {
        // SAFETY: `i` < 512 (callers index with `entry::index`); a volatile
        // store keeps the entry a single 64-bit write, as the processor may
        // walk the table concurrently.
        unsafe { core::ptr::write_volatile(&raw mut self.table.0[i], value) };
    }
}

pub(crate) struct Ept {
    root: KBox<Node>,
}

impl Ept {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            root: Node::new(entry::LEVELS)?,
        })
    }

    /// The EPT pointer for the VMCS.
    pub(crate) fn eptp(&self) -> u64 {
        entry::eptp(virt_to_phys(&*self.root.table))
    }

    /// Maps the 4 KiB page at `gpa` to host-physical `hpa` with `perms`.
    pub(crate) fn map(&mut self, gpa: u64, hpa: u64, perms: u64) -> Result {
        let mut node = &mut self.root;
        for level in (2..=entry::LEVELS).rev() {
            let i = entry::index(gpa, level);
            if node.children[i].is_none() {
                let child = Node::new(level - 1)?;
                node.set(i, entry::table(virt_to_phys(&*child.table)));
                node.children[i] = Some(child);
            }
            node = node.children[i].as_mut().ok_or(EINVAL)?;
        }
        node.set(entry::index(gpa, 1), entry::leaf(hpa, perms));
        Ok(())
    }

    /// Removes the mapping of the page at `gpa`, if any.
    pub(crate) fn unmap(&mut self, gpa: u64) {
        let mut node = &mut self.root;
        for level in (2..=entry::LEVELS).rev() {
            match node.children[entry::index(gpa, level)].as_mut() {
                Some(child) => node = child,
                None => return,
            }
        }
        node.set(entry::index(gpa, 1), 0);
    }
}
