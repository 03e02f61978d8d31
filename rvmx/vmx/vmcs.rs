// SPDX-License-Identifier: GPL-2.0

//! VMCS field encodings (SDM Vol. 3, Appendix B), typed by width and access.
//!
//! One enum per width and access class: a read-only exit-information field
//! has no write path, and a 16-bit field cannot be written with a 64-bit
//! value, because `Vmcs::write` only takes the writable enums with their
//! width's type. Pure definitions: also compiled into the host unit tests.

/// A VMCS field that can be read as a `T`.
pub(crate) trait Readable {
    type Value;
    fn encoding(self) -> u32;
}

/// A VMCS field that can also be written.
pub(crate) trait Writable: Readable {}

macro_rules! fields {
    ($(#[$m:meta])* $name:ident: $ty:ty, $access:ident { $($field:ident = $enc:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        pub(crate) enum $name {
            $($field = $enc,)*
        }

        impl Readable for $name {
            type Value = $ty;
            fn encoding(self) -> u32 {
                self as u32
            }
        }

        fields!(@access $name $access);
    };
    (@access $name:ident rw) => { impl Writable for $name {} };
    (@access $name:ident ro) => {};
}

fields!(
    /// 16-bit control and state fields.
    Field16: u16, rw {
        Vpid = 0x0000,
        GuestEsSelector = 0x0800,
        GuestCsSelector = 0x0802,
        GuestSsSelector = 0x0804,
        GuestDsSelector = 0x0806,
        GuestFsSelector = 0x0808,
        GuestGsSelector = 0x080a,
        GuestLdtrSelector = 0x080c,
        GuestTrSelector = 0x080e,
        GuestInterruptStatus = 0x0810,
        HostEsSelector = 0x0c00,
        HostCsSelector = 0x0c02,
        HostSsSelector = 0x0c04,
        HostDsSelector = 0x0c06,
        HostFsSelector = 0x0c08,
        HostGsSelector = 0x0c0a,
        HostTrSelector = 0x0c0c,
    }
);

fields!(
    /// 64-bit control and state fields.
    Field64: u64, rw {
        MsrBitmap = 0x2004,
        TscOffset = 0x2010,
        VirtualApicPage = 0x2012,
        ApicAccessPage = 0x2014,
        EptPointer = 0x201a,
        EoiExitBitmap0 = 0x201c,
        EoiExitBitmap1 = 0x201e,
        EoiExitBitmap2 = 0x2020,
        EoiExitBitmap3 = 0x2022,
        VmcsLinkPointer = 0x2800,
        GuestIa32Debugctl = 0x2802,
        GuestIa32Pat = 0x2804,
        GuestIa32Efer = 0x2806,
        HostIa32Pat = 0x2c00,
        HostIa32Efer = 0x2c02,
    }
);

fields!(
    /// 64-bit read-only exit information.
    Field64Ro: u64, ro {
        GuestPhysicalAddress = 0x2400,
    }
);

fields!(
    /// 32-bit control and state fields.
    Field32: u32, rw {
        PinBasedControls = 0x4000,
        ProcBasedControls = 0x4002,
        ExceptionBitmap = 0x4004,
        PageFaultErrorCodeMask = 0x4006,
        PageFaultErrorCodeMatch = 0x4008,
        Cr3TargetCount = 0x400a,
        ExitControls = 0x400c,
        ExitMsrStoreCount = 0x400e,
        ExitMsrLoadCount = 0x4010,
        EntryControls = 0x4012,
        EntryMsrLoadCount = 0x4014,
        EntryInterruptionInfo = 0x4016,
        EntryExceptionErrorCode = 0x4018,
        EntryInstructionLength = 0x401a,
        TprThreshold = 0x401c,
        ProcBasedControls2 = 0x401e,
        GuestEsLimit = 0x4800,
        GuestCsLimit = 0x4802,
        GuestSsLimit = 0x4804,
        GuestDsLimit = 0x4806,
        GuestFsLimit = 0x4808,
        GuestGsLimit = 0x480a,
        GuestLdtrLimit = 0x480c,
        GuestTrLimit = 0x480e,
        GuestGdtrLimit = 0x4810,
        GuestIdtrLimit = 0x4812,
        GuestEsAccessRights = 0x4814,
        GuestCsAccessRights = 0x4816,
        GuestSsAccessRights = 0x4818,
        GuestDsAccessRights = 0x481a,
        GuestFsAccessRights = 0x481c,
        GuestGsAccessRights = 0x481e,
        GuestLdtrAccessRights = 0x4820,
        GuestTrAccessRights = 0x4822,
        GuestInterruptibility = 0x4824,
        GuestActivityState = 0x4826,
        GuestSysenterCs = 0x482a,
        PreemptionTimerValue = 0x482e,
        HostSysenterCs = 0x4c00,
    }
);

fields!(
    /// 32-bit read-only exit information.
    Field32Ro: u32, ro {
        InstructionError = 0x4400,
        ExitReason = 0x4402,
        ExitInterruptionInfo = 0x4404,
        IdtVectoringInfo = 0x4408,
        IdtVectoringErrorCode = 0x440a,
        ExitInstructionLength = 0x440c,
        ExitInstructionInfo = 0x440e,
    }
);

fields!(
    /// Natural-width control and state fields.
    FieldNat: u64, rw {
        Cr0GuestHostMask = 0x6000,
        Cr4GuestHostMask = 0x6002,
        Cr0ReadShadow = 0x6004,
        Cr4ReadShadow = 0x6006,
        GuestCr0 = 0x6800,
        GuestCr3 = 0x6802,
        GuestCr4 = 0x6804,
        GuestEsBase = 0x6806,
        GuestCsBase = 0x6808,
        GuestSsBase = 0x680a,
        GuestDsBase = 0x680c,
        GuestFsBase = 0x680e,
        GuestGsBase = 0x6810,
        GuestLdtrBase = 0x6812,
        GuestTrBase = 0x6814,
        GuestGdtrBase = 0x6816,
        GuestIdtrBase = 0x6818,
        GuestDr7 = 0x681a,
        GuestRsp = 0x681c,
        GuestRip = 0x681e,
        GuestRflags = 0x6820,
        GuestPendingDebugExceptions = 0x6822,
        GuestSysenterEsp = 0x6824,
        GuestSysenterEip = 0x6826,
        HostCr0 = 0x6c00,
        HostCr3 = 0x6c02,
        HostCr4 = 0x6c04,
        HostFsBase = 0x6c06,
        HostGsBase = 0x6c08,
        HostTrBase = 0x6c0a,
        HostGdtrBase = 0x6c0c,
        HostIdtrBase = 0x6c0e,
        HostSysenterEsp = 0x6c10,
        HostSysenterEip = 0x6c12,
        HostRip = 0x6c16,
    }
);

fields!(
    /// Natural-width read-only exit information.
    FieldNatRo: u64, ro {
        ExitQualification = 0x6400,
        GuestLinearAddress = 0x640a,
    }
);

/// The 8 guest segment registers, in VMCS order (ES, CS, SS, DS, FS, GS,
/// LDTR, TR): selector, base, limit and access-rights fields of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
    Ldtr,
    Tr,
}

impl Seg {
    pub(crate) const ALL: [Seg; 8] = [
        Seg::Es,
        Seg::Cs,
        Seg::Ss,
        Seg::Ds,
        Seg::Fs,
        Seg::Gs,
        Seg::Ldtr,
        Seg::Tr,
    ];

    pub(crate) fn selector(self) -> Field16 {
        [
            Field16::GuestEsSelector,
            Field16::GuestCsSelector,
            Field16::GuestSsSelector,
            Field16::GuestDsSelector,
            Field16::GuestFsSelector,
            Field16::GuestGsSelector,
            Field16::GuestLdtrSelector,
            Field16::GuestTrSelector,
        ][self as usize]
    }

    pub(crate) fn base(self) -> FieldNat {
        [
            FieldNat::GuestEsBase,
            FieldNat::GuestCsBase,
            FieldNat::GuestSsBase,
            FieldNat::GuestDsBase,
            FieldNat::GuestFsBase,
            FieldNat::GuestGsBase,
            FieldNat::GuestLdtrBase,
            FieldNat::GuestTrBase,
        ][self as usize]
    }

    pub(crate) fn limit(self) -> Field32 {
        [
            Field32::GuestEsLimit,
            Field32::GuestCsLimit,
            Field32::GuestSsLimit,
            Field32::GuestDsLimit,
            Field32::GuestFsLimit,
            Field32::GuestGsLimit,
            Field32::GuestLdtrLimit,
            Field32::GuestTrLimit,
        ][self as usize]
    }

    pub(crate) fn access_rights(self) -> Field32 {
        [
            Field32::GuestEsAccessRights,
            Field32::GuestCsAccessRights,
            Field32::GuestSsAccessRights,
            Field32::GuestDsAccessRights,
            Field32::GuestFsAccessRights,
            Field32::GuestGsAccessRights,
            Field32::GuestLdtrAccessRights,
            Field32::GuestTrAccessRights,
        ][self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The width bits (14:13) of an encoding: 0 = 16, 1 = 64, 2 = 32,
    /// 3 = natural.
    const fn width_bits(encoding: u32) -> u32 {
        (encoding >> 13) & 3
    }

    #[test]
    fn widths_match_the_encodings() {
        assert_eq!(width_bits(Field16::GuestTrSelector.encoding()), 0);
        assert_eq!(width_bits(Field64::EptPointer.encoding()), 1);
        assert_eq!(width_bits(Field64Ro::GuestPhysicalAddress.encoding()), 1);
        assert_eq!(width_bits(Field32::ProcBasedControls2.encoding()), 2);
        assert_eq!(width_bits(Field32Ro::ExitReason.encoding()), 2);
        assert_eq!(width_bits(FieldNat::HostRip.encoding()), 3);
        assert_eq!(width_bits(FieldNatRo::ExitQualification.encoding()), 3);
    }

    #[test]
    fn segment_fields_line_up() {
        for (i, seg) in Seg::ALL.iter().enumerate() {
            let i = i as u32 * 2;
            assert_eq!(seg.selector().encoding(), 0x0800 + i);
            assert_eq!(seg.limit().encoding(), 0x4800 + i);
            assert_eq!(seg.access_rights().encoding(), 0x4814 + i);
            assert_eq!(seg.base().encoding(), 0x6806 + i);
        }
    }
}
