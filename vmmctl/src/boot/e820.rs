//! The BIOS memory map (e820) both boot protocols hand to the guest.

use crate::boot::layout::{EBDA, HIGH_MEMORY};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// RAM below the EBDA, the EBDA and legacy area (MP table, ACPI tables,
/// video and BIOS) reserved, then every RAM range above 1 MiB.
pub fn map(ram: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: EBDA,
            size: HIGH_MEMORY - EBDA,
            kind: E820Kind::Reserved,
        },
    ];
    for &(start, len) in ram {
        let start_hi = start.max(HIGH_MEMORY);
        let end = start + len;
        if end > start_hi {
            map.push(E820Entry {
                addr: start_hi,
                size: end - start_hi,
                kind: E820Kind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_covers_low_ram_legacy_hole_and_high_ram() {
        let m = map(&[(0, 256 << 20)]);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].addr, m[0].size, m[0].kind),
            (0, 0x9fc00, E820Kind::Ram)
        );
        assert_eq!(m[1].kind, E820Kind::Reserved);
        assert_eq!(m[1].addr + m[1].size, 0x10_0000);
        assert_eq!((m[2].addr, m[2].size), (0x10_0000, (256 << 20) - 0x10_0000));
    }

    #[test]
    fn ram_above_4g_gets_its_own_entry() {
        let m = map(&[(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(m.len(), 4);
        assert_eq!(
            (m[3].addr, m[3].size, m[3].kind),
            (4 << 30, 1 << 30, E820Kind::Ram)
        );
    }
}
