//! The smallest ACPI a Linux guest needs to power off and find its CPUs:
//! RSDP -> XSDT -> FADT -> DSDT, and the MADT. The DSDT only names the S5
//! (soft-off) sleep type; the FADT points at a PM1 event/control register
//! pair (devices::acpi_pm). SMI_CMD = 0 tells the OS the machine is always
//! in ACPI mode; no FACS, PM timer or GPE block. The MADT is needed
//! because Linux, once it has ACPI, ignores the MP table; it repeats the
//! MP table's facts (one local APIC per vCPU, the IOAPIC after them, ISA
//! IRQs on the same IOAPIC pins, so no overrides), and says whether there
//! are 8259 PICs.

use anyhow::{Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::layout::{ACPI_TABLES, IOAPIC, LAPIC};
use crate::devices::rtc;

/// PM1a event block (status, then enable; 2 bytes each) and PM1a control
/// block: the I/O ports QEMU's PIIX4 uses.
pub const PM1_EVENT_PORT: u16 = 0x600;
pub const PM1_CONTROL_PORT: u16 = 0x604;
/// The SLP_TYP value our DSDT gives S5; written to PM1 control with SLP_EN
/// it means "power off".
pub const S5_SLEEP_TYPE: u16 = 5;
/// The SCI's ISA interrupt, as on a PC.
const SCI_IRQ: u16 = 9;

const RSDP_AT: u64 = ACPI_TABLES;
const XSDT_AT: u64 = ACPI_TABLES + 0x40;
const FADT_AT: u64 = ACPI_TABLES + 0x100;
const DSDT_AT: u64 = ACPI_TABLES + 0x300;
const MADT_AT: u64 = ACPI_TABLES + 0x400;

const FADT_LEN: usize = 276;
/// IAPC_BOOT_ARCH: "no CMOS RTC", though vmmctl has one (devices::rtc):
/// Linux still reads the time from it at boot, but does not bind rtc-cmos,
/// which would offer alarms on an RTC that raises no interrupts. The 8042
/// flag is left clear so Linux does not probe a keyboard controller that
/// only knows the reset command.
const BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// FADT flags: power and sleep buttons are not fixed hardware.
const FLAG_PWR_BUTTON: u32 = 1 << 4;
const FLAG_SLP_BUTTON: u32 = 1 << 5;

/// AML: Name (_S5_, Package (4) { 5, 0, 0, 0 })
const DSDT_AML: [u8; 13] = [
    0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0x00, 0x00, 0x00,
];

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_sub(*b))
}

/// A table: the standard 36-byte header, then `body`, checksummed.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend(signature);
    t.extend(((36 + body.len()) as u32).to_le_bytes());
    t.extend([revision, 0]);
    t.extend(*b"RVMX  ");
    t.extend(*b"VMMCTL  ");
    t.extend(1u32.to_le_bytes()); // OEM revision
    t.extend(*b"RVMX"); // creator ID
    t.extend(1u32.to_le_bytes()); // creator revision
    t.extend(body);
    t[9] = checksum(&t);
    t
}

fn put<const N: usize>(buf: &mut [u8], at: usize, bytes: [u8; N]) {
    buf[at..at + N].copy_from_slice(&bytes);
}

fn fadt() -> Vec<u8> {
    let mut b = vec![0u8; FADT_LEN - 36];
    // Offsets below are the FADT's own, less the header.
    let o = |off: usize| off - 36;
    put(&mut b, o(40), (DSDT_AT as u32).to_le_bytes());
    put(&mut b, o(46), SCI_IRQ.to_le_bytes());
    put(&mut b, o(56), u32::from(PM1_EVENT_PORT).to_le_bytes());
    put(&mut b, o(64), u32::from(PM1_CONTROL_PORT).to_le_bytes());
    b[o(88)] = 4; // PM1_EVT_LEN
    b[o(89)] = 2; // PM1_CNT_LEN
                  // C2/C3 latencies above the limits mean "not supported".
    put(&mut b, o(96), 101u16.to_le_bytes());
    put(&mut b, o(98), 1001u16.to_le_bytes());
    // Linux reads the century only from where the FADT says it is.
    b[o(108)] = rtc::CENTURY;
    put(&mut b, o(109), BOOT_ARCH_NO_CMOS_RTC.to_le_bytes());
    put(
        &mut b,
        o(112),
        (FLAG_PWR_BUTTON | FLAG_SLP_BUTTON).to_le_bytes(),
    );
    put(&mut b, o(140), DSDT_AT.to_le_bytes()); // X_DSDT
    table(b"FACP", 6, &b)
}

/// `legacy_pic`: the hypervisor emulates 8259s (KVM's full irqchip). Where
/// it does not (rvmx), PCAT_COMPAT must stay clear: Linux 6.9 and later
/// trust that flag instead of probing, and would drive PICs that are not
/// there rather than say "Using NULL legacy PIC".
fn madt(cpus: u8, legacy_pic: bool) -> Vec<u8> {
    const PCAT_COMPAT: u32 = 1;
    const LOCAL_APIC: u8 = 0;
    const IO_APIC: u8 = 1;
    const ENABLED: u32 = 1;
    let mut b = Vec::new();
    b.extend(LAPIC.to_le_bytes());
    b.extend(if legacy_pic { PCAT_COMPAT } else { 0 }.to_le_bytes());
    for id in 0..cpus {
        b.extend([LOCAL_APIC, 8, id, id]); // type, length, UID, APIC ID
        b.extend(ENABLED.to_le_bytes());
    }
    b.extend([IO_APIC, 12, cpus, 0]); // type, length, IOAPIC ID, reserved
    b.extend(IOAPIC.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // GSI base
    table(b"APIC", 5, &b)
}

fn rsdp() -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend(*b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend(*b"RVMX  ");
    r.push(2); // revision: ACPI 2.0+, has the XSDT
    r.extend(0u32.to_le_bytes()); // no RSDT
    r.extend(36u32.to_le_bytes());
    r.extend(XSDT_AT.to_le_bytes());
    r.extend([0, 0, 0, 0]); // extended checksum, reserved
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The tables for a VM with `cpus` vCPUs, as (address, bytes).
pub fn tables(cpus: u8, legacy_pic: bool) -> Vec<(u64, Vec<u8>)> {
    let xsdt: Vec<u8> = [FADT_AT, MADT_AT]
        .iter()
        .flat_map(|a| a.to_le_bytes())
        .collect();
    vec![
        (RSDP_AT, rsdp()),
        (XSDT_AT, table(b"XSDT", 1, &xsdt)),
        (FADT_AT, fadt()),
        (DSDT_AT, table(b"DSDT", 2, &DSDT_AML)),
        (MADT_AT, madt(cpus, legacy_pic)),
    ]
}

/// Writes the tables; returns the RSDP's address for the zero page.
pub fn write(mem: &GuestMemoryMmap, cpus: u8, legacy_pic: bool) -> Result<u64> {
    for (at, bytes) in tables(cpus, legacy_pic) {
        mem.write_slice(&bytes, GuestAddress(at))
            .context("writing the ACPI tables")?;
    }
    Ok(RSDP_AT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn checksums_lengths_and_links() {
        let t = tables(crate::boot::mptable::MAX_CPUS, true);
        let find = |at: u64| &t.iter().find(|(a, _)| *a == at).unwrap().1;
        let rsdp = find(RSDP_AT);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        assert_eq!(u64_at(rsdp, 24), XSDT_AT);
        for (at, bytes) in &t[1..] {
            assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "length at {at:#x}");
            assert_eq!(sum(bytes), 0, "checksum at {at:#x}");
        }
        let xsdt = find(XSDT_AT);
        assert_eq!((u64_at(xsdt, 36), u64_at(xsdt, 44)), (FADT_AT, MADT_AT));
        let fadt = find(FADT_AT);
        assert_eq!((&fadt[..4], fadt.len()), (&b"FACP"[..], FADT_LEN));
        assert_eq!(u64_at(fadt, 140), DSDT_AT);
        assert_eq!(u32_at(fadt, 64), u32::from(PM1_CONTROL_PORT));
        assert_eq!(u32_at(fadt, 48), 0, "SMI_CMD 0: always in ACPI mode");
        assert_eq!(fadt[108], 0x32, "CENTURY: the CMOS century byte");
        // Tables must not overlap.
        let mut spans: Vec<_> = t.iter().map(|(a, b)| (*a, *a + b.len() as u64)).collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn madt_lists_each_cpu_then_the_ioapic() {
        let m = madt(3, false);
        assert_eq!(&m[..4], b"APIC");
        assert_eq!(u32_at(&m, 36), LAPIC);
        assert_eq!(u32_at(&m, 40), 0, "no PCAT_COMPAT: no 8259s");
        assert_eq!(u32_at(&madt(3, true), 40), 1, "PCAT_COMPAT");
        let entries = &m[44..];
        let cpus: Vec<_> = entries
            .chunks(8)
            .take(3)
            .map(|e| (e[0], e[1], e[3], u32_at(e, 4)))
            .collect();
        assert_eq!(cpus, [(0, 8, 0, 1), (0, 8, 1, 1), (0, 8, 2, 1)]);
        let io = &entries[24..];
        assert_eq!((io[0], io[1], io[2], u32_at(io, 4)), (1, 12, 3, IOAPIC));
        assert_eq!(u32_at(io, 8), 0, "GSI base 0: ISA IRQ n is pin n");
        assert_eq!(io.len(), 12);
    }

    #[test]
    fn dsdt_names_s5() {
        let dsdt = table(b"DSDT", 2, &DSDT_AML);
        let aml = &dsdt[36..];
        assert_eq!(&aml[1..5], b"_S5_");
        // PkgLength counts itself and what follows.
        assert_eq!(aml[6] as usize, aml.len() - 6);
        assert_eq!((aml[8], aml[9]), (0x0a, S5_SLEEP_TYPE as u8));
    }
}
