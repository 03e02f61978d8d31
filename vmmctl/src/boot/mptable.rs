//! The Intel MultiProcessor Specification 1.4 table: how a kernel without
//! ACPI (or without ACPI's MADT) finds the CPUs, the IOAPIC and how ISA
//! interrupts reach it. It lives in the first KiB of the EBDA, where Linux
//! scans for the floating pointer.

use anyhow::{bail, Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::layout::{EBDA, IOAPIC, LAPIC};

const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
/// ISA IRQs wired to IOAPIC pins one to one, as KVM's default GSI
/// routing does.
const ISA_IRQS: u8 = 16;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// The most CPUs whose entries fit in the EBDA's first KiB.
pub const MAX_CPUS: u8 = 32;

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_sub(*b))
}

/// Floating pointer + configuration table for `cpus` CPUs (APIC IDs
/// 0..cpus; the IOAPIC takes ID `cpus`), laid out for address `at`.
pub fn build(cpus: u8, at: u64) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        bail!("the MP table holds 1..={MAX_CPUS} CPUs, not {cpus}");
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, id, LAPIC_VERSION, flags]);
        // Signature (family 6) and feature flags (FPU, APIC): what MP
        // parsers print; the kernel reads CPUID itself.
        entries.extend(0x600u32.to_le_bytes());
        entries.extend(0x201u32.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, 0]);
    entries.extend(*b"ISA   ");
    count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend(IOAPIC.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // Conforming polarity and trigger (0): edge, active high for ISA.
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // The 8259 through LINT0 and NMI through LINT1 of every local APIC.
    for (kind, lint) in [(INT_EXTINT, 0), (INT_NMI, 1)] {
        entries.extend([ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let table_at = at + FLOATING_LEN as u64;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend(*b"PCMP");
    header.extend(u16::try_from(HEADER_LEN + entries.len())?.to_le_bytes());
    header.extend([SPEC_REV, 0]); // checksum below
    header.extend(*b"RVMX    ");
    header.extend(*b"VMMCTL      ");
    header.extend(0u32.to_le_bytes()); // no OEM table
    header.extend(0u16.to_le_bytes());
    header.extend(count.to_le_bytes());
    header.extend(LAPIC.to_le_bytes());
    header.extend(0u32.to_le_bytes()); // extended table length, reserved
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend(*b"_MP_");
    floating.extend(u32::try_from(table_at)?.to_le_bytes());
    floating.extend([1, SPEC_REV, 0, 0, 0, 0, 0, 0]); // length in 16 bytes; no default config
    floating[10] = checksum(&floating);

    floating.extend(table);
    Ok(floating)
}

/// Writes the MP table at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    let bytes = build(cpus, EBDA)?;
    mem.write_slice(&bytes, GuestAddress(EBDA))
        .context("writing the MP table")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        let t = build(2, EBDA).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, EBDA + 16);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0, "configuration table checksum");
        assert!(t.len() <= 1024, "fits in the EBDA's first KiB");
    }

    #[test]
    fn one_processor_entry_per_cpu_and_only_cpu0_is_bsp() {
        for cpus in [1u8, 2, 4, MAX_CPUS] {
            let t = build(cpus, EBDA).unwrap();
            let mut i = 16 + HEADER_LEN;
            let mut procs = vec![];
            while i < t.len() {
                let len = if t[i] == ENTRY_PROCESSOR { 20 } else { 8 };
                if t[i] == ENTRY_PROCESSOR {
                    procs.push((t[i + 1], t[i + 3]));
                }
                if t[i] == ENTRY_IOAPIC {
                    assert_eq!(t[i + 1], cpus, "IOAPIC ID follows the CPUs");
                }
                i += len;
            }
            assert_eq!(i, t.len());
            assert_eq!(procs.len(), cpus as usize);
            assert_eq!(procs[0], (0, CPU_ENABLED | CPU_BSP));
            assert!(procs[1..].iter().all(|&(_, f)| f == CPU_ENABLED));
        }
        assert!(build(MAX_CPUS + 1, EBDA).is_err());
    }
}
