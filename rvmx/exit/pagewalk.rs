// SPDX-License-Identifier: GPL-2.0

//! Guest linear to guest-physical translation by walking the guest's page
//! tables (no paging, 32-bit, PAE, 4-level), to fetch the instruction that
//! caused an MMIO exit. Pure logic: also compiled into the host unit tests;
//! guest memory is read through a caller-supplied function.

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The paging-relevant guest registers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Paging {
    pub(crate) cr0: u64,
    pub(crate) cr3: u64,
    pub(crate) cr4: u64,
    pub(crate) efer: u64,
}

/// Translates `la`; `read` returns the 8 bytes at a guest-physical address
/// (4-byte entries use the low half). None if not mapped.
pub(crate) fn translate(
    p: &Paging,
    la: u64,
    mut read: impl FnMut(u64) -> Option<u64>,
) -> Option<u64> {
    if p.cr0 & CR0_PG == 0 {
        return Some(la & 0xffff_ffff);
    }
    if p.efer & EFER_LMA != 0 {
        if p.cr4 & CR4_LA57 != 0 {
            return None;
        }
        return walk64(p.cr3 & ADDR_MASK, la, &[39, 30, 21, 12], &mut read);
    }
    if p.cr4 & CR4_PAE != 0 {
        let la = la & 0xffff_ffff;
        let pdpte = read((p.cr3 & 0xffff_ffe0) + ((la >> 30) & 3) * 8)?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        return walk64(pdpte & ADDR_MASK, la, &[21, 12], &mut read);
    }
    // 32-bit paging: 4-byte entries, 4 MiB pages with CR4.PSE.
    let la = la & 0xffff_ffff;
    let pde = read((p.cr3 & 0xffff_f000) + ((la >> 22) & 0x3ff) * 4)? & 0xffff_ffff;
    if pde & PRESENT == 0 {
        return None;
    }
    if pde & LARGE != 0 && p.cr4 & CR4_PSE != 0 {
        return Some((pde & 0xffc0_0000) | ((pde & 0x1fe000) << 19) | (la & 0x3f_ffff));
    }
    let pte = read((pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4)? & 0xffff_ffff;
    (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (la & 0xfff))
}

/// Walks 8-byte-entry tables from `table`, one level per shift.
fn walk64(
    mut table: u64,
    la: u64,
    shifts: &[u32],
    read: &mut impl FnMut(u64) -> Option<u64>,
) -> Option<u64> {
    for (i, &shift) in shifts.iter().enumerate() {
        let entry = read(table + ((la >> shift) & 0x1ff) * 8)?;
        if entry & PRESENT == 0 {
            return None;
        }
        let last = i + 1 == shifts.len();
        if last || (entry & LARGE != 0 && shift <= 30) {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (la & page_mask));
        }
        table = entry & ADDR_MASK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn mem(entries: &[(u64, u64)]) -> impl FnMut(u64) -> Option<u64> + '_ {
        let map: HashMap<u64, u64> = entries.iter().copied().collect();
        move |gpa| Some(*map.get(&gpa).unwrap_or(&0))
    }

    #[test]
    fn no_paging_is_identity() {
        assert_eq!(
            translate(&Paging::default(), 0x1234_5678, |_| None),
            Some(0x1234_5678)
        );
    }

    #[test]
    fn four_level_with_2m_and_4k_pages() {
        let p = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA,
        };
        // PML4[0] -> 0x2000; PDPT[0] -> 0x3000; PD[0] = 2 MiB page at 0x4000_0000;
        // PD[1] -> PT 0x5000; PT[3] = 0x9000.
        let tables = [
            (0x1000, 0x2003),
            (0x2000, 0x3003),
            (0x3000, 0x4000_0083),
            (0x3008, 0x5003),
            (0x5018, 0x9003),
        ];
        assert_eq!(translate(&p, 0x1_2345, mem(&tables)), Some(0x4001_2345));
        assert_eq!(translate(&p, 0x20_3abc, mem(&tables)), Some(0x9abc));
        assert_eq!(
            translate(&p, 0x20_4000, mem(&tables)),
            None,
            "PT[4] not present"
        );
    }

    #[test]
    fn thirty_two_bit_and_pae() {
        let p = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
        };
        let tables = [
            (0x1000 + 4, 0x0080_0083),
            (0x1000, 0x2003),
            (0x2000 + 5 * 4, 0x7003),
        ];
        assert_eq!(
            translate(&p, 0x40_1234, mem(&tables)),
            Some(0x80_1234),
            "4 MiB page"
        );
        assert_eq!(translate(&p, 0x5abc, mem(&tables)), Some(0x7abc));
        let pae = Paging { cr4: CR4_PAE, ..p };
        let tables = [(0x1000, 0x2001), (0x2000, 0x3003), (0x3000 + 8, 0x6003)];
        assert_eq!(translate(&pae, 0x1fff, mem(&tables)), Some(0x6fff));
    }
}
