// SPDX-License-Identifier: GPL-2.0

//! VPIDs: tags that keep each vCPU's cached translations apart from the
//! host's (VPID 0) and from other vCPUs'. Lock-free bitmap allocator.

use kernel::sync::atomic::{Atomic, Full, Relaxed};

/// VPIDs 1..1024; 0 is the host's.
const WORDS: usize = 16;

pub(crate) struct VpidPool {
    used: [Atomic<u64>; WORDS],
}

impl VpidPool {
    pub(crate) fn new() -> Self {
        // VPID 0 is never handed out.
        let used = core::array::from_fn(|i| Atomic::new(u64::from(i == 0)));
        Self { used }
    }

    pub(crate) fn alloc(&self) -> Option<u16> {
        for (w, word) in self.used.iter().enumerate() {
            let mut cur = word.load(Relaxed);
            while cur != u64::MAX {
                let bit = (!cur).trailing_zeros();
                match word.cmpxchg(cur, cur | (1 << bit), Full) {
                    Ok(_) => return Some((w * 64 + bit as usize) as u16),
                    Err(now) => cur = now,
                }
            }
        }
        None
    }

    pub(crate) fn free(&self, vpid: u16) {
        let (w, bit) = (usize::from(vpid) / 64, u32::from(vpid) % 64);
        if vpid == 0 || w >= WORDS {
            return;
        }
        let word = &self.used[w];
        let mut cur = word.load(Relaxed);
        while let Err(now) = word.cmpxchg(cur, cur & !(1 << bit), Full) {
            cur = now;
        }
    }
}
