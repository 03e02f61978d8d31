// SPDX-License-Identifier: GPL-2.0

//! What the guest sees of CPUID: the host's values, without what rvmx
//! does not virtualize. Pure logic: also compiled into the host unit tests.

/// CPUID.1:ECX bits rvmx hides: MONITOR/MWAIT (3; MWAIT exits as #UD),
/// VMX (5; no nested VMX), SMX (6), EST (7), TM2 (8), SDBG (11), PDCM (15).
const LEAF1_ECX_HIDDEN: u32 =
    (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 11) | (1 << 15);
/// CPUID.1:ECX bits of rvmx's local APIC: x2APIC (21), TSC-deadline (24).
const LEAF1_ECX_APIC: u32 = (1 << 21) | (1 << 24);
/// CPUID.1:EDX.APIC[9]: rvmx's local APIC.
const LEAF1_EDX_APIC: u32 = 1 << 9;
/// CPUID.1:ECX.hypervisor: the guest runs under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bits rvmx hides: MCE (7) and MCA (14) (no machine-check
/// virtualization), ACPI thermal (22), TM (29), PBE (31).
const LEAF1_EDX_HIDDEN: u32 = (1 << 7) | (1 << 14) | (1 << 22) | (1 << 29) | (1 << 31);
/// CPUID.6:EAX.ARAT[2]: the local APIC timer runs in every C-state.
const LEAF6_EAX_ARAT: u32 = 1 << 2;

/// The TSC leaves rvmx fills in (0x15: TSC/crystal ratio and crystal
/// frequency; 0x16: processor base frequency), so a guest knows its TSC
/// and local APIC timer rates without calibrating them against a PIT.
const LEAF_TSC: u32 = 0x15;
const LEAF_FREQUENCY: u32 = 0x16;

/// CPUID.(7,0):EBX.TSC_ADJUST[1]: IA32_TSC_ADJUST, which rvmx does not
/// virtualize.
const LEAF7_EBX_TSC_ADJUST: u32 = 1 << 1;
/// CPUID.(0xD,1):EAX: XSAVES (3) and XFD (4) need IA32_XSS and IA32_XFD,
/// which rvmx does not virtualize.
const LEAFD1_EAX_HIDDEN: u32 = (1 << 3) | (1 << 4);

/// The guest's view of CPUID leaf `leaf`, sub-leaf `subleaf`, given the
/// host's registers (eax, ebx, ecx, edx), the vCPU's id and the TSC
/// frequency.
pub(crate) fn filter(
    leaf: u32,
    subleaf: u32,
    host: [u32; 4],
    vcpu_id: u32,
    tsc_khz: u32,
) -> [u32; 4] {
    let [eax, ebx, ecx, edx] = host;
    match leaf {
        0 => [eax.clamp(LEAF_FREQUENCY, MAX_BASIC), ebx, ecx, edx],
        1 => [
            eax,
            // The initial APIC id is the vCPU id; one logical processor.
            (ebx & 0x0000_ffff) | (vcpu_id << 24) | (1 << 16),
            (ecx & !LEAF1_ECX_HIDDEN) | LEAF1_ECX_HYPERVISOR | LEAF1_ECX_APIC,
            (edx & !LEAF1_EDX_HIDDEN) | LEAF1_EDX_APIC,
        ],
        // Thermal/power: only that the APIC timer always runs.
        6 => [LEAF6_EAX_ARAT, 0, 0, 0],
        // TSC = crystal * 1 / 1, crystal in Hz: the local APIC timer's rate.
        LEAF_TSC => [1, 1, tsc_khz.saturating_mul(1000), 0],
        LEAF_FREQUENCY => [tsc_khz / 1000, tsc_khz / 1000, 0, 0],
        7 if subleaf == 0 => [eax, ebx & !LEAF7_EBX_TSC_ADJUST, ecx, edx],
        0xd if subleaf == 1 => [eax & !LEAFD1_EAX_HIDDEN, ebx, ecx, edx],
        // Performance monitoring: nothing.
        0xa => [0; 4],
        // Cache/topology leaves describe the host's cores: say one core.
        4 => [eax & 0x3ff, ebx, ecx, edx],
        0xb | 0x1f => [0, 0, 0, vcpu_id],
        // Hypervisor leaves: rvmx's signature, no further leaves.
        0x4000_0000 => [
            0x4000_0000,
            u32::from_le_bytes(*b"rvmx"),
            u32::from_le_bytes(*b"rvmx"),
            u32::from_le_bytes(*b"rvmx"),
        ],
        0x4000_0001..=0x4fff_ffff => [0; 4],
        _ => host,
    }
}

/// One leaf (and sub-leaf, when `significant`) the guest may be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) leaf: u32,
    pub(crate) subleaf: u32,
    pub(crate) significant: bool,
    pub(crate) regs: [u32; 4],
}

/// The highest basic and extended leaves rvmx enumerates.
const MAX_BASIC: u32 = 0x1f;
const MAX_EXTENDED: u32 = 0x8000_0021;

/// Enumerates what rvmx supports (`RVMX_GET_SUPPORTED_CPUID`): every basic
/// and extended leaf of the host, with the sub-leaves of the leaves that
/// have them, each filtered as the guest would see it on vCPU 0, and
/// rvmx's hypervisor leaf.
pub(crate) fn supported(
    host: impl Fn(u32, u32) -> [u32; 4],
    tsc_khz: u32,
    mut emit: impl FnMut(Entry),
) {
    let mut put = |leaf, subleaf, significant| {
        let regs = filter(leaf, subleaf, host(leaf, subleaf), 0, tsc_khz);
        emit(Entry {
            leaf,
            subleaf,
            significant,
            regs,
        });
    };
    let max_basic = host(0, 0)[0].clamp(LEAF_FREQUENCY, MAX_BASIC);
    for leaf in 0..=max_basic {
        match leaf {
            // Deterministic cache parameters: until the cache type is 0.
            4 => (0..8)
                .take_while(|&s| host(4, s)[0] & 0x1f != 0 || s == 0)
                .for_each(|s| put(4, s, true)),
            // Structured features: sub-leaves 0..=EAX of sub-leaf 0.
            7 => (0..=host(7, 0)[0].min(3)).for_each(|s| put(7, s, true)),
            // XSAVE: the two main sub-leaves and each component that exists.
            0xd => (0..64)
                .filter(|&s| s < 2 || host(0xd, s)[0] != 0)
                .for_each(|s| put(0xd, s, true)),
            0xb | 0x1f => put(leaf, 0, true),
            _ => put(leaf, 0, false),
        }
    }
    put(0x4000_0000, 0, false);
    let max_ext = host(0x8000_0000, 0)[0].min(MAX_EXTENDED);
    for leaf in 0x8000_0000..=max_ext {
        put(leaf, 0, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf1_hides_vmx_and_says_hypervisor() {
        let [_, ebx, ecx, edx] = filter(1, 0, [0x506e3, 0x0102_0800, 0, 0xffff_ffff], 3, 0);
        assert_eq!(ecx & (1 << 5), 0, "VMX visible");
        assert_ne!(ecx & (1 << 31), 0, "hypervisor bit missing");
        assert_ne!(edx & (1 << 9), 0, "APIC hidden");
        assert_eq!(ecx & LEAF1_ECX_APIC, LEAF1_ECX_APIC, "x2APIC, TSC-deadline");
        assert_eq!(ebx >> 24, 3, "APIC id is not the vCPU id");
        assert_eq!(ebx & 0xffff, 0x0800);
    }

    #[test]
    fn hypervisor_signature() {
        let [max, b, c, d] = filter(0x4000_0000, 0, [0; 4], 0, 0);
        assert_eq!(max, 0x4000_0000);
        let sig: [u8; 12] = [b.to_le_bytes(), c.to_le_bytes(), d.to_le_bytes()]
            .concat()
            .try_into()
            .unwrap();
        assert_eq!(&sig, b"rvmxrvmxrvmx");
    }

    #[test]
    fn supported_enumerates_leaves_and_subleaves() {
        let host = |leaf: u32, sub: u32| match (leaf, sub) {
            (0, _) => [0xd, 0, 0, 0],
            (1, _) => [0x506e3, 0, 1 << 5, 0],
            (4, 0..=2) => [0x21 + sub, 0, 0, 0],
            (7, 0) => [1, 0, 0, 0],
            (0xd, 2) => [256, 576, 0, 0],
            (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
            _ => [0; 4],
        };
        let mut all = Vec::new();
        supported(host, 2_000_000, |e| all.push(e));
        let find = |l, s| all.iter().find(|e| e.leaf == l && e.subleaf == s).copied();
        assert_eq!(
            find(1, 0).map(|e| e.regs[2] & (1 << 5)),
            Some(0),
            "VMX offered"
        );
        assert_eq!(all.iter().filter(|e| e.leaf == 4).count(), 3);
        assert_eq!(all.iter().filter(|e| e.leaf == 7).count(), 2);
        assert!(find(0xd, 2).is_some() && find(0xd, 3).is_none());
        assert!(find(0x4000_0000, 0).is_some());
        assert_eq!(find(0, 0).map(|e| e.regs[0]), Some(0x16), "TSC leaves");
        assert_eq!(
            find(0x15, 0).map(|e| e.regs),
            Some([1, 1, 2_000_000_000, 0])
        );
        assert_eq!(find(0x16, 0).map(|e| e.regs[0]), Some(2000));
        assert_eq!(find(6, 0).map(|e| e.regs[0]), Some(LEAF6_EAX_ARAT));
        assert!(find(0x8000_0008, 0).is_some() && find(0x8000_0009, 0).is_none());
        assert!(
            find(7, 1).is_some_and(|e| e.significant) && find(2, 0).is_some_and(|e| !e.significant)
        );
    }

    #[test]
    fn hides_msrs_rvmx_does_not_virtualize() {
        assert_eq!(
            filter(7, 0, [0, 0xffff_ffff, 0, 0], 0, 0)[1] & (1 << 1),
            0,
            "TSC_ADJUST"
        );
        assert_eq!(
            filter(7, 1, [0, 0xffff_ffff, 0, 0], 0, 0)[1],
            0xffff_ffff,
            "sub-leaf 1 untouched"
        );
        assert_eq!(filter(0xd, 1, [0xff, 0, 0, 0], 0, 0)[0], 0xe7, "XSAVES/XFD");
    }

    #[test]
    fn other_leaves_pass_through() {
        assert_eq!(filter(0, 0, [0x1b, 1, 2, 3], 0, 0), [0x1b, 1, 2, 3]);
        assert_eq!(filter(0x8000_0001, 0, [4, 5, 6, 7], 0, 0), [4, 5, 6, 7]);
    }
}
