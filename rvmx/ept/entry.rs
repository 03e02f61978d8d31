// SPDX-License-Identifier: GPL-2.0

//! EPT entry and EPTP formats (SDM Vol. 3, 29.3.2, 25.6.11).
//! Pure logic: also compiled into the host unit tests.

pub(crate) const READ: u64 = 1 << 0;
pub(crate) const WRITE: u64 = 1 << 1;
pub(crate) const EXECUTE: u64 = 1 << 2;
const MEMORY_TYPE_WB: u64 = 6;
/// Bits 51:12 of an entry or EPTP: a physical address.
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Entries per table, and the levels of a 4-level walk (4 = PML4).
pub(crate) const ENTRIES: usize = 512;
pub(crate) const LEVELS: u32 = 4;

/// The index of `gpa` in the table at `level` (4 = PML4 ... 1 = PT).
pub(crate) const fn index(gpa: u64, level: u32) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// An entry pointing to the next-level table at `table`: every access is
/// allowed there, the leaf decides.
pub(crate) const fn table(table: u64) -> u64 {
    (table & ADDRESS_MASK) | READ | WRITE | EXECUTE
}

/// A 4 KiB leaf mapping `page` with permissions `perms` (READ/WRITE/EXECUTE),
/// write-back cacheable.
pub(crate) const fn leaf(page: u64, perms: u64) -> u64 {
    (page & ADDRESS_MASK) | (perms & (READ | WRITE | EXECUTE)) | (MEMORY_TYPE_WB << 3)
}

/// The EPT pointer for the PML4 at `pml4`: write-back, 4-level walk.
pub(crate) const fn eptp(pml4: u64) -> u64 {
    (pml4 & ADDRESS_MASK) | MEMORY_TYPE_WB | ((LEVELS as u64 - 1) << 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices() {
        let gpa = 0x0000_7f12_3456_7000;
        assert_eq!(index(gpa, 4), 0xfe);
        assert_eq!(index(gpa, 3), 0x48);
        assert_eq!(index(gpa, 2), 0x1a2);
        assert_eq!(index(gpa, 1), 0x167);
        assert_eq!(index(0xfff, 1), 0);
    }

    #[test]
    fn formats() {
        assert_eq!(eptp(0x1234_5000), 0x1234_501e);
        assert_eq!(leaf(0xabc_d000, READ | EXECUTE), 0xabc_d035);
        assert_eq!(table(0x5000), 0x5007);
        assert_eq!(leaf(0x8000_0000_1000, 0), 0x8000_0000_1030);
    }
}
