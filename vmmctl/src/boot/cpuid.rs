//! CPUID as each vCPU sees it: the hypervisor's supported leaves, with the
//! topology made true for this VM (APIC IDs, package size) and the
//! features a guest must not trust masked.

use crate::hypervisor::CpuidEntry;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_PERFMON: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// The CPUID table for vCPU `id` of a VM with `cpus` vCPUs, each one core
/// of a single package (one thread per core).
pub fn normalize(supported: &[CpuidEntry], id: u8, cpus: u8) -> Vec<CpuidEntry> {
    let (id, cpus) = (u32::from(id), u32::from(cpus));
    // Bits of APIC ID that number the cores of the package.
    let core_bits = 32 - (cpus - 1).leading_zeros();
    supported
        .iter()
        .map(|&e| {
            let mut e = e;
            match e.function {
                LEAF_FEATURES => {
                    // EBX: initial APIC ID, logical CPUs per package, CLFLUSH
                    // line size in 8-byte units.
                    e.ebx = (id << 24) | (cpus << 16) | (8 << 8);
                    e.ecx |= ECX_HYPERVISOR;
                    if cpus > 1 {
                        e.edx |= EDX_HTT;
                    } else {
                        e.edx &= !EDX_HTT;
                    }
                }
                LEAF_CACHE => {
                    // EAX[31:26]: cores per package - 1; [25:14]: threads
                    // sharing this cache - 1 (one per core, except the
                    // package-wide L3).
                    let level = (e.eax >> 5) & 7;
                    let sharing = if level >= 3 { cpus - 1 } else { 0 };
                    e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((cpus - 1) << 26);
                }
                // No virtual PMU: a guest that finds one programs MSRs the
                // VMM does not save or restore.
                LEAF_PERFMON => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
                LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                    // Subleaf 0: the SMT level (one thread); subleaf 1: the
                    // core level; the rest are invalid.
                    e.edx = id;
                    let (eax, ebx, kind) = match e.index {
                        0 => (0, 1, 1),
                        1 => (core_bits, cpus, 2),
                        _ => (0, 0, 0),
                    };
                    e.eax = eax;
                    e.ebx = ebx;
                    e.ecx = (kind << 8) | (e.index & 0xff);
                }
                _ => {}
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            indexed: matches!(function, 4 | 0xb),
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: EDX_HTT,
        }
    }

    fn find(t: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
        *t.iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn leaf1_names_the_vcpu_and_the_package() {
        let t = normalize(&[leaf(1, 0)], 3, 4);
        let e = find(&t, 1, 0);
        assert_eq!(e.ebx >> 24, 3, "initial APIC ID");
        assert_eq!((e.ebx >> 16) & 0xff, 4, "logical CPUs");
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        let single = find(&normalize(&[leaf(1, 0)], 0, 1), 1, 0);
        assert_eq!(single.edx & EDX_HTT, 0, "one CPU: no HTT");
    }

    #[test]
    fn topology_leaf_counts_cores() {
        let t = normalize(&[leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)], 1, 3);
        let smt = find(&t, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 1));
        let core = find(&t, 0xb, 1);
        // 3 cores need 2 bits of APIC ID.
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 1));
        let end = find(&t, 0xb, 2);
        assert_eq!((end.ebx, end.ecx >> 8), (0, 0));
    }

    #[test]
    fn perfmon_is_hidden_and_cache_leaf_matches_cpu_count() {
        let mut l2 = leaf(4, 2);
        l2.eax = 2 << 5 | 0x3; // level 2, unified
        let t = normalize(&[leaf(0xa, 0), l2], 0, 2);
        assert_eq!(find(&t, 0xa, 0).eax, 0);
        let c = find(&t, 4, 2);
        assert_eq!(
            (c.eax >> 26, (c.eax >> 14) & 0xfff, c.eax & 0x3fff),
            (1, 0, 0x43)
        );
    }

    #[test]
    fn interrupt_and_tsc_features_pass_through() {
        // What rvmx advertises so Linux needs no PIT: APIC, x2APIC and
        // TSC-deadline in leaf 1, ARAT in leaf 6, the TSC in 0x15/0x16.
        let mut l1 = leaf(1, 0);
        l1.ecx = (1 << 21) | (1 << 24);
        l1.edx = 1 << 9;
        let l6 = CpuidEntry {
            function: 6,
            eax: 1 << 2,
            ..Default::default()
        };
        let l15 = CpuidEntry {
            function: 0x15,
            eax: 1,
            ebx: 1,
            ecx: 2_000_000_000,
            ..Default::default()
        };
        let l16 = CpuidEntry {
            function: 0x16,
            eax: 2000,
            ..Default::default()
        };
        let t = normalize(&[l1, l6, l15, l16], 1, 2);
        let e = find(&t, 1, 0);
        assert_eq!(e.ecx & ((1 << 21) | (1 << 24)), (1 << 21) | (1 << 24));
        assert_eq!(e.edx & (1 << 9), 1 << 9, "APIC");
        assert_eq!(find(&t, 6, 0), l6);
        assert_eq!(find(&t, 0x15, 0), l15);
        assert_eq!(find(&t, 0x16, 0), l16);
    }
}
