// SPDX-License-Identifier: GPL-2.0

//! Guest segment registers: conversion between the ABI's `rvmx_segment`
//! fields and the VMCS access-rights format (SDM Vol. 3, 25.4.1, Table 25-2).
//! Pure logic: also compiled into the host unit tests.

/// The unpacked attributes of a segment, as `struct rvmx_segment` holds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attributes {
    pub(crate) ty: u8,
    pub(crate) s: u8,
    pub(crate) dpl: u8,
    pub(crate) present: u8,
    pub(crate) avl: u8,
    pub(crate) l: u8,
    pub(crate) db: u8,
    pub(crate) g: u8,
    pub(crate) unusable: u8,
}

const AR_UNUSABLE: u32 = 1 << 16;

impl Attributes {
    /// The VMCS access-rights word. An unusable segment is only its
    /// unusable bit, as VM entry ignores the rest.
    pub(crate) fn to_access_rights(self) -> u32 {
        if self.unusable != 0 {
            return AR_UNUSABLE;
        }
        u32::from(self.ty & 0xf)
            | u32::from(self.s & 1) << 4
            | u32::from(self.dpl & 3) << 5
            | u32::from(self.present & 1) << 7
            | u32::from(self.avl & 1) << 12
            | u32::from(self.l & 1) << 13
            | u32::from(self.db & 1) << 14
            | u32::from(self.g & 1) << 15
    }

    pub(crate) fn from_access_rights(ar: u32) -> Self {
        let bit = |n: u32| ((ar >> n) & 1) as u8;
        Self {
            ty: (ar & 0xf) as u8,
            s: bit(4),
            dpl: ((ar >> 5) & 3) as u8,
            present: bit(7),
            avl: bit(12),
            l: bit(13),
            db: bit(14),
            g: bit(15),
            unusable: bit(16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let cs = Attributes {
            ty: 0xb,
            s: 1,
            present: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        assert_eq!(cs.to_access_rights(), 0xa09b);
        assert_eq!(Attributes::from_access_rights(0xa09b), cs);
    }

    #[test]
    fn real_mode_data_segment() {
        let ds = Attributes {
            ty: 3,
            s: 1,
            present: 1,
            ..Default::default()
        };
        assert_eq!(ds.to_access_rights(), 0x93);
    }

    #[test]
    fn unusable_is_only_the_unusable_bit() {
        let ldt = Attributes {
            ty: 2,
            present: 1,
            unusable: 1,
            ..Default::default()
        };
        assert_eq!(ldt.to_access_rights(), 1 << 16);
        assert_eq!(Attributes::from_access_rights(1 << 16).unusable, 1);
    }

    #[test]
    fn out_of_range_fields_are_masked() {
        let bad = Attributes {
            ty: 0xff,
            dpl: 7,
            s: 3,
            ..Default::default()
        };
        assert_eq!(bad.to_access_rights(), 0xf | 1 << 4 | 3 << 5);
    }
}
