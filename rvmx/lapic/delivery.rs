// SPDX-License-Identifier: GPL-2.0

//! Interrupt messages between local APICs and from the VMM: the ICR and MSI
//! formats, and which local APICs a destination selects (SDM Vol. 3,
//! 11.6 and 11.11). Pure logic: also compiled into the host unit tests.

/// Delivery mode of an interrupt message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    Startup,
    ExtInt,
}

impl DeliveryMode {
    fn decode(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::Startup,
            7 => Self::ExtInt,
            _ => return None,
        })
    }
}

/// Destination shorthand of an IPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shorthand {
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// An interrupt message, from an ICR write or an MSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) vector: u8,
    pub(crate) mode: DeliveryMode,
    pub(crate) logical: bool,
    /// Level-triggered (fixed interrupts: the EOI is reported to the VMM).
    pub(crate) level_triggered: bool,
    /// Assert (1) or de-assert (0): an INIT de-assert does nothing.
    pub(crate) assert: bool,
    pub(crate) shorthand: Shorthand,
    /// 8 bits in xAPIC format, 32 in x2APIC format.
    pub(crate) dest: u32,
    /// Whether `dest` is in x2APIC format (its broadcast is 0xffffffff).
    pub(crate) x2apic: bool,
}

/// The broadcast destinations of the two formats.
const BROADCAST_XAPIC: u32 = 0xff;
const BROADCAST_X2APIC: u32 = 0xffff_ffff;

impl Message {
    /// An ICR value (low word in bits 31:0, destination in 63:56 in xAPIC
    /// mode, in 63:32 in x2APIC mode).
    pub(crate) fn from_icr(icr: u64, x2apic: bool) -> Option<Self> {
        let lo = icr as u32;
        let dest = if x2apic {
            (icr >> 32) as u32
        } else {
            (icr >> 56) as u32
        };
        Some(Self {
            vector: lo as u8,
            mode: DeliveryMode::decode(lo >> 8)?,
            logical: lo & (1 << 11) != 0,
            assert: lo & (1 << 14) != 0,
            level_triggered: lo & (1 << 15) != 0,
            shorthand: match (lo >> 18) & 3 {
                0 => Shorthand::None,
                1 => Shorthand::SelfOnly,
                2 => Shorthand::AllIncludingSelf,
                _ => Shorthand::AllExcludingSelf,
            },
            dest,
            x2apic,
        })
    }

    /// An MSI as written on the bus: address 0xFEExxxxx (destination in
    /// bits 19:12, and 31:8 of `address_hi` for larger x2APIC ids;
    /// destination mode in bit 2), data with vector, delivery mode and
    /// trigger mode. `None` if the address is not an interrupt message or
    /// the delivery mode is reserved.
    pub(crate) fn from_msi(address: u64, data: u32) -> Option<Self> {
        if (address as u32) >> 20 != 0xfee {
            return None;
        }
        let low_dest = ((address >> 12) & 0xff) as u32;
        let high_dest = ((address >> 32) as u32) & 0xffff_ff00;
        Some(Self {
            vector: data as u8,
            mode: DeliveryMode::decode(data >> 8)?,
            logical: address & (1 << 2) != 0,
            assert: true,
            // Bit 15: trigger mode; bit 14 (level) matters only then.
            level_triggered: data & (1 << 15) != 0,
            shorthand: Shorthand::None,
            dest: high_dest | low_dest,
            x2apic: high_dest != 0,
        })
    }
}

/// What a local APIC offers to destination matching.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) id: u32,
    /// The logical destination register (xAPIC: bits 31:24).
    pub(crate) ldr: u32,
    /// Flat (true) or cluster (false) logical model, xAPIC only.
    pub(crate) flat: bool,
    pub(crate) x2apic: bool,
    /// Hardware- and software-enabled: a disabled APIC takes no fixed or
    /// lowest-priority interrupts (but INIT, SIPI and NMI).
    pub(crate) enabled: bool,
}

impl Target {
    /// Whether destination `dest` in `logical` or physical mode selects
    /// this local APIC (shorthands are the sender's business).
    pub(crate) fn matches(&self, m: &Message) -> bool {
        let broadcast = if m.x2apic {
            BROADCAST_X2APIC
        } else {
            BROADCAST_XAPIC
        };
        if m.dest == broadcast {
            return true;
        }
        if !m.logical {
            return m.dest == self.id;
        }
        if self.x2apic {
            // Cluster in 31:16, a bit per member in 15:0.
            m.dest >> 16 == self.ldr >> 16 && m.dest & self.ldr & 0xffff != 0
        } else {
            let (dest, ldr) = (m.dest & 0xff, self.ldr >> 24);
            if self.flat {
                dest & ldr != 0
            } else {
                dest >> 4 == ldr >> 4 && dest & ldr & 0xf != 0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(dest: u32, logical: bool, x2apic: bool) -> Message {
        Message {
            vector: 0x30,
            mode: DeliveryMode::Fixed,
            logical,
            level_triggered: false,
            assert: true,
            shorthand: Shorthand::None,
            dest,
            x2apic,
        }
    }

    #[test]
    fn decodes_an_xapic_init_and_sipi() {
        // INIT, level assert, to APIC 1.
        let m = Message::from_icr((1u64 << 56) | 0x4500, false).unwrap();
        assert_eq!(m.mode, DeliveryMode::Init);
        assert!(m.assert);
        assert_eq!(m.dest, 1);
        // SIPI vector 0x9a, all excluding self.
        let m = Message::from_icr(0x000c_069a, false).unwrap();
        assert_eq!(m.mode, DeliveryMode::Startup);
        assert_eq!(m.vector, 0x9a);
        assert_eq!(m.shorthand, Shorthand::AllExcludingSelf);
        assert!(Message::from_icr(0x300, false).is_none(), "reserved mode");
    }

    #[test]
    fn decodes_x2apic_icr_destination() {
        let m = Message::from_icr((7u64 << 32) | 0x00ec, true).unwrap();
        assert_eq!((m.dest, m.vector, m.x2apic), (7, 0xec, true));
    }

    #[test]
    fn decodes_msi() {
        // Physical, APIC 2, vector 0x41, fixed, edge.
        let m = Message::from_msi(0xfee0_2000, 0x41).unwrap();
        assert_eq!((m.dest, m.vector, m.logical), (2, 0x41, false));
        assert!(!m.level_triggered);
        let m = Message::from_msi(0xfee0_0004, 0xc041).unwrap();
        assert!(m.logical && m.level_triggered);
        assert!(Message::from_msi(0xfed0_0000, 0x41).is_none());
    }

    #[test]
    fn physical_and_broadcast() {
        let t = Target {
            id: 3,
            ..Default::default()
        };
        assert!(t.matches(&fixed(3, false, false)));
        assert!(!t.matches(&fixed(2, false, false)));
        assert!(t.matches(&fixed(0xff, false, false)));
        let t2 = Target {
            id: 3,
            x2apic: true,
            ..Default::default()
        };
        assert!(t2.matches(&fixed(0xffff_ffff, false, true)));
        assert!(!t2.matches(&fixed(0x103, false, true)));
    }

    #[test]
    fn logical_flat_cluster_and_x2apic_cluster() {
        let flat = Target {
            id: 1,
            ldr: 0x02 << 24,
            flat: true,
            x2apic: false,
            enabled: true,
        };
        assert!(flat.matches(&fixed(0x03, true, false)));
        assert!(!flat.matches(&fixed(0x01, true, false)));
        let cluster = Target {
            id: 5,
            ldr: 0x12 << 24,
            flat: false,
            x2apic: false,
            enabled: true,
        };
        assert!(cluster.matches(&fixed(0x13, true, false)));
        assert!(!cluster.matches(&fixed(0x23, true, false)));
        // x2APIC id 17: cluster 1, bit 1.
        let x2 = Target {
            id: 17,
            ldr: (1 << 16) | (1 << 1),
            flat: false,
            x2apic: true,
            enabled: true,
        };
        assert!(x2.matches(&fixed((1 << 16) | 0x2, true, true)));
        assert!(!x2.matches(&fixed(0x2, true, true)));
    }
}
