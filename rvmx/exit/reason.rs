// SPDX-License-Identifier: GPL-2.0

//! VM-exit reasons and exit qualifications, decoded once into types
//! (SDM Vol. 3, Appendix C and 28.2.1). Pure logic: also compiled into the
//! host unit tests.

/// Bit 31 of the exit-reason field: the VM entry itself failed.
const ENTRY_FAILURE: u32 = 1 << 31;

/// The basic exit reasons rvmx tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    ExceptionOrNmi,
    ExternalInterrupt,
    TripleFault,
    /// The guest can take an interrupt (interrupt-window exiting).
    InterruptWindow,
    /// The guest can take an NMI (NMI-window exiting).
    NmiWindow,
    Cpuid,
    Hlt,
    Invd,
    Rdpmc,
    Vmcall,
    /// A VMX instruction other than VMCALL executed by the guest.
    VmxInstruction,
    CrAccess,
    DrAccess,
    Io,
    Rdmsr,
    Wrmsr,
    Mwait,
    Monitor,
    /// An access to the xAPIC page that APIC virtualization does not serve
    /// from the virtual-APIC page (fault-like: the instruction did not run).
    ApicAccess,
    /// EOI of a vector set in the EOI-exit bitmap (after the processor did
    /// the EOI in the virtual-APIC page).
    VirtualizedEoi,
    /// A write to an APIC register went to the virtual-APIC page
    /// (trap-like: the instruction completed).
    ApicWrite,
    EptViolation,
    EptMisconfig,
    PreemptionTimer,
    Wbinvd,
    Xsetbv,
    /// Any other basic reason, with its number.
    Other(u16),
}

impl Reason {
    fn from_basic(basic: u16) -> Self {
        match basic {
            0 => Self::ExceptionOrNmi,
            1 => Self::ExternalInterrupt,
            2 => Self::TripleFault,
            7 => Self::InterruptWindow,
            8 => Self::NmiWindow,
            10 => Self::Cpuid,
            12 => Self::Hlt,
            13 => Self::Invd,
            15 => Self::Rdpmc,
            18 => Self::Vmcall,
            19..=27 | 50 | 53 | 59 => Self::VmxInstruction,
            28 => Self::CrAccess,
            29 => Self::DrAccess,
            30 => Self::Io,
            31 => Self::Rdmsr,
            32 => Self::Wrmsr,
            36 => Self::Mwait,
            39 => Self::Monitor,
            44 => Self::ApicAccess,
            45 => Self::VirtualizedEoi,
            48 => Self::EptViolation,
            49 => Self::EptMisconfig,
            52 => Self::PreemptionTimer,
            54 => Self::Wbinvd,
            55 => Self::Xsetbv,
            56 => Self::ApicWrite,
            other => Self::Other(other),
        }
    }
}

/// The exit-reason field: a failed VM entry, or an exit with its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitReason {
    /// VM entry failed while loading guest state; the basic reason (33, 34
    /// or 41) says why.
    EntryFailure(u16),
    Exit(Reason),
}

impl ExitReason {
    pub(crate) fn decode(raw: u32) -> Self {
        let basic = raw as u16;
        if raw & ENTRY_FAILURE != 0 {
            Self::EntryFailure(basic)
        } else {
            Self::Exit(Reason::from_basic(basic))
        }
    }
}

/// The exit qualification of an I/O instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoAccess {
    pub(crate) port: u16,
    /// 1, 2 or 4 bytes.
    pub(crate) size: u8,
    pub(crate) is_in: bool,
    /// INS/OUTS.
    pub(crate) string: bool,
    /// With a REP prefix.
    pub(crate) rep: bool,
}

impl IoAccess {
    pub(crate) fn decode(q: u64) -> Self {
        Self {
            size: (q & 7) as u8 + 1,
            is_in: q & (1 << 3) != 0,
            string: q & (1 << 4) != 0,
            rep: q & (1 << 5) != 0,
            port: (q >> 16) as u16,
        }
    }
}

/// The exit qualification of a control-register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CrAccess {
    /// MOV to CR`cr` from general-purpose register `gpr`.
    MovTo {
        cr: u8,
        gpr: u8,
    },
    /// MOV from CR`cr` to general-purpose register `gpr`.
    MovFrom {
        cr: u8,
        gpr: u8,
    },
    Clts,
    /// LMSW with its 16-bit source operand.
    Lmsw(u16),
}

impl CrAccess {
    pub(crate) fn decode(q: u64) -> Self {
        let cr = (q & 0xf) as u8;
        let gpr = ((q >> 8) & 0xf) as u8;
        match (q >> 4) & 3 {
            0 => Self::MovTo { cr, gpr },
            1 => Self::MovFrom { cr, gpr },
            2 => Self::Clts,
            _ => Self::Lmsw((q >> 16) as u16),
        }
    }
}

/// The exit qualification of an EPT violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EptViolation {
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) fetch: bool,
    /// Whether the guest-physical address was mapped at all (any of the
    /// entry's read/write/execute permissions).
    pub(crate) mapped: bool,
}

impl EptViolation {
    pub(crate) fn decode(q: u64) -> Self {
        Self {
            read: q & 1 != 0,
            write: q & 2 != 0,
            fetch: q & 4 != 0,
            mapped: q & (7 << 3) != 0,
        }
    }
}

/// The exit qualification of an APIC-access exit: the offset in the xAPIC
/// page, for an access by a linear address (other kinds, during event
/// delivery or by guest-physical address, are `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ApicPageAccess {
    pub(crate) offset: u32,
    pub(crate) write: bool,
}

impl ApicPageAccess {
    pub(crate) fn decode(q: u64) -> Option<Self> {
        let offset = (q & 0xfff) as u32;
        match (q >> 12) & 0xf {
            0 => Some(Self {
                offset,
                write: false,
            }),
            1 => Some(Self {
                offset,
                write: true,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_reasons_and_entry_failures() {
        assert_eq!(ExitReason::decode(30), ExitReason::Exit(Reason::Io));
        assert_eq!(
            ExitReason::decode(48),
            ExitReason::Exit(Reason::EptViolation)
        );
        assert_eq!(
            ExitReason::decode(0x8000_0021),
            ExitReason::EntryFailure(33)
        );
        assert_eq!(
            ExitReason::decode(21),
            ExitReason::Exit(Reason::VmxInstruction)
        );
        assert_eq!(ExitReason::decode(62), ExitReason::Exit(Reason::Other(62)));
    }

    #[test]
    fn decodes_io() {
        // out dx, al to port 0x3f8
        assert_eq!(
            IoAccess::decode(0x03f8_0000),
            IoAccess {
                port: 0x3f8,
                size: 1,
                is_in: false,
                string: false,
                rep: false
            }
        );
        // rep insw from port 0x1f0
        assert_eq!(
            IoAccess::decode(0x01f0_0039),
            IoAccess {
                port: 0x1f0,
                size: 2,
                is_in: true,
                string: true,
                rep: true
            }
        );
    }

    #[test]
    fn decodes_cr_access() {
        assert_eq!(CrAccess::decode(0x0300), CrAccess::MovTo { cr: 0, gpr: 3 });
        assert_eq!(
            CrAccess::decode(0x0514),
            CrAccess::MovFrom { cr: 4, gpr: 5 }
        );
        assert_eq!(CrAccess::decode(0x20), CrAccess::Clts);
        assert_eq!(CrAccess::decode(0x0011_0030), CrAccess::Lmsw(0x11));
    }

    #[test]
    fn decodes_ept_violation() {
        let v = EptViolation::decode(0x182);
        assert!(v.write && !v.read && !v.fetch && !v.mapped);
        let v = EptViolation::decode(0x0a);
        assert!(v.write && v.mapped);
    }

    #[test]
    fn decodes_apic_access() {
        assert_eq!(
            ApicPageAccess::decode(0x1390),
            Some(ApicPageAccess {
                offset: 0x390,
                write: true
            })
        );
        assert_eq!(
            ApicPageAccess::decode(0x0391),
            Some(ApicPageAccess {
                offset: 0x391,
                write: false
            })
        );
        assert_eq!(ApicPageAccess::decode(0x2000), None, "instruction fetch");
        assert_eq!(
            ApicPageAccess::decode(0x3080),
            None,
            "during event delivery"
        );
    }
}
