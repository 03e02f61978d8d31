// SPDX-License-Identifier: GPL-2.0

//! Architectural numbers of the x86 processor that several parts of rvmx
//! use: exception vectors, control-register and XCR0 bits, MSR indices
//! (SDM Vol. 1 13.3, Vol. 3 2.5, 6.15, Vol. 4). Pure definitions: also
//! compiled into the host unit tests.

/// Exception vectors.
pub(crate) mod vector {
    pub(crate) const NMI: u8 = 2;
    pub(crate) const UD: u8 = 6;
    pub(crate) const GP: u8 = 13;
}

/// XCR0 state-component bits.
pub(crate) mod xcr0 {
    pub(crate) const X87: u64 = 1 << 0;
    pub(crate) const SSE: u64 = 1 << 1;
    pub(crate) const AVX: u64 = 1 << 2;
    pub(crate) const BNDREGS: u64 = 1 << 3;
    pub(crate) const BNDCSR: u64 = 1 << 4;
    pub(crate) const OPMASK: u64 = 1 << 5;
    pub(crate) const ZMM_HI256: u64 = 1 << 6;
    pub(crate) const HI16_ZMM: u64 = 1 << 7;
    pub(crate) const XTILECFG: u64 = 1 << 17;
    pub(crate) const XTILEDATA: u64 = 1 << 18;
    /// The three AVX-512 components, which XSETBV sets all or none of.
    pub(crate) const AVX512: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;
    pub(crate) const MPX: u64 = BNDREGS | BNDCSR;
    pub(crate) const AMX: u64 = XTILECFG | XTILEDATA;

    /// Whether XSETBV of `value` to XCR`index` at privilege level `cpl` is
    /// valid on a processor whose supported components are `supported`
    /// (SDM Vol. 1, 13.3); an invalid one raises #GP(0).
    pub(crate) fn valid(index: u32, value: u64, cpl: u8, supported: u64) -> bool {
        let all_or_none = |group: u64| value & group == 0 || value & group == group;
        index == 0
            && cpl == 0
            && value & X87 != 0
            && value & !supported == 0
            // AVX state lives in the upper halves of the SSE registers.
            && (value & AVX == 0 || value & SSE != 0)
            // AVX-512 needs AVX, and its three components go together.
            && all_or_none(AVX512)
            && (value & AVX512 == 0 || value & AVX != 0)
            && all_or_none(MPX)
            && all_or_none(AMX)
    }
}

/// MSR indices.
pub(crate) mod msr {
    pub(crate) const TSC: u32 = 0x10;
    pub(crate) const PLATFORM_ID: u32 = 0x17;
    pub(crate) const APIC_BASE: u32 = 0x1b;
    pub(crate) const BIOS_SIGN_ID: u32 = 0x8b;
    pub(crate) const MTRR_CAP: u32 = 0xfe;
    pub(crate) const SYSENTER_CS: u32 = 0x174;
    pub(crate) const SYSENTER_ESP: u32 = 0x175;
    pub(crate) const SYSENTER_EIP: u32 = 0x176;
    pub(crate) const MISC_ENABLE: u32 = 0x1a0;
    pub(crate) const DEBUGCTL: u32 = 0x1d9;
    pub(crate) const PAT: u32 = 0x277;
    pub(crate) const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub(crate) const TSC_DEADLINE: u32 = 0x6e0;
    /// The x2APIC registers: 0x800 + (xAPIC offset >> 4).
    pub(crate) const X2APIC_FIRST: u32 = 0x800;
    pub(crate) const X2APIC_LAST: u32 = 0x8ff;
    pub(crate) const EFER: u32 = 0xc000_0080;
    pub(crate) const STAR: u32 = 0xc000_0081;
    pub(crate) const LSTAR: u32 = 0xc000_0082;
    pub(crate) const CSTAR: u32 = 0xc000_0083;
    pub(crate) const SFMASK: u32 = 0xc000_0084;
    pub(crate) const FS_BASE: u32 = 0xc000_0100;
    pub(crate) const GS_BASE: u32 = 0xc000_0101;
    pub(crate) const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub(crate) const TSC_AUX: u32 = 0xc000_0103;
}

/// RFLAGS bits.
pub(crate) mod rflags {
    pub(crate) const IF: u64 = 1 << 9;
}

/// Whether `addr` is canonical with 48-bit linear addresses.
pub(crate) fn canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

#[cfg(test)]
mod tests {
    use super::xcr0::*;

    /// A Skylake-X host: x87, SSE, AVX, MPX, AVX-512, PKRU.
    const HOST: u64 = 0x2ff;

    #[test]
    fn xcr0_accepts_what_linux_sets() {
        assert!(valid(0, 0x7, 0, HOST));
        assert!(valid(0, 0xe7, 0, HOST));
        assert!(valid(0, 0x2ff, 0, HOST));
        assert!(valid(0, 0x1, 0, HOST));
    }

    #[test]
    fn xcr0_refuses_partial_avx512() {
        // Opmask without the ZMM components: this value oopsed the host
        // when it reached XSETBV unchecked.
        assert!(!valid(0, 0x27, 0, HOST));
        assert!(!valid(0, 0x67, 0, HOST));
        assert!(!valid(0, 0xc7, 0, HOST));
        assert!(!valid(0, 0xe3, 0, HOST), "AVX-512 without AVX");
    }

    #[test]
    fn xcr0_refuses_architectural_violations() {
        assert!(!valid(0, 0x6, 0, HOST), "x87 is always on");
        assert!(!valid(0, 0x5, 0, HOST), "AVX without SSE");
        assert!(!valid(0, 0xf, 0, HOST), "BNDREGS without BNDCSR");
        assert!(!valid(0, 0x7 | XTILECFG, 0, HOST | AMX), "AMX halves");
        assert!(valid(0, 0x7 | AMX, 0, HOST | AMX));
    }

    #[test]
    fn xcr0_refuses_host_lacks_other_indices_and_user_mode() {
        assert!(!valid(0, 0x7 | AMX, 0, HOST));
        assert!(!valid(0, 0x7, 0, 0x3));
        assert!(!valid(1, 0x7, 0, HOST));
        assert!(!valid(0, 0x7, 3, HOST));
    }
}
