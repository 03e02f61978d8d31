//! The GDT vmmctl installs, and the segment registers that match it.
//! Linux's 64-bit boot protocol wants flat 4 GiB segments at selectors
//! 0x10 (code) and 0x18 (data); multiboot wants flat 32-bit ones. One table
//! serves both.

use anyhow::{Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::layout::{GDT, IDT};
use crate::hypervisor::{DescriptorTable, Segment};

pub const CODE32: u16 = 0x08;
pub const CODE64: u16 = 0x10;
pub const DATA: u16 = 0x18;
pub const TSS: u16 = 0x20;

/// Access byte + flags nibble of each descriptor (bits 40..56 of it).
const NULL_FLAGS: u16 = 0;
const CODE32_FLAGS: u16 = 0xc09b; // G, D, present, code, execute/read, accessed
const CODE64_FLAGS: u16 = 0xa09b; // G, L, present, code, execute/read, accessed
const DATA_FLAGS: u16 = 0xc093; // G, B, present, data, read/write, accessed
const TSS_FLAGS: u16 = 0x008b; // present, busy 32/64-bit TSS

/// The table, indexed by selector / 8.
fn table() -> [u64; 5] {
    [
        descriptor(NULL_FLAGS, 0, 0),
        descriptor(CODE32_FLAGS, 0, 0xfffff),
        descriptor(CODE64_FLAGS, 0, 0xfffff),
        descriptor(DATA_FLAGS, 0, 0xfffff),
        descriptor(TSS_FLAGS, 0, 0x67),
    ]
}

/// Encodes a descriptor from its flags (access byte in bits 0..8, flags in
/// 12..16), base and 20-bit limit.
fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The segment register as the CPU caches it after loading `selector`.
pub fn segment(selector: u16) -> Segment {
    let d = table()[usize::from(selector >> 3)];
    let limit = ((d >> 32) & 0xf_0000) | (d & 0xffff);
    let g = (d >> 55) & 1 == 1;
    Segment {
        base: ((d >> 32) & 0xff00_0000) | ((d >> 16) & 0xff_ffff),
        // With G the limit counts 4 KiB pages; the register holds bytes.
        limit: if g {
            ((limit << 12) | 0xfff) as u32
        } else {
            limit as u32
        },
        selector,
        kind: ((d >> 40) & 0xf) as u8,
        present: (d >> 47) & 1 == 1,
        dpl: ((d >> 45) & 3) as u8,
        db: (d >> 54) & 1 == 1,
        s: (d >> 44) & 1 == 1,
        l: (d >> 53) & 1 == 1,
        g,
    }
}

/// Writes the GDT and an empty IDT (the guest installs its own before it
/// enables interrupts); returns GDTR and IDTR.
pub fn write(mem: &GuestMemoryMmap) -> Result<(DescriptorTable, DescriptorTable)> {
    let gdt = table();
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT + 8 * i as u64))
            .context("writing the GDT")?;
    }
    mem.write_obj(0u64, GuestAddress(IDT))
        .context("writing the IDT")?;
    Ok((
        DescriptorTable {
            base: GDT,
            limit: (8 * gdt.len() - 1) as u16,
        },
        DescriptorTable {
            base: IDT,
            limit: 7,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_like_the_sdm() {
        // Well-known values: flat 64-bit code and flat data.
        assert_eq!(descriptor(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn segments_decode_what_the_table_holds() {
        let cs = segment(CODE64);
        assert!(cs.l && !cs.db && cs.present && cs.s && cs.g);
        assert_eq!((cs.kind, cs.limit, cs.base), (0xb, 0xffff_ffff, 0));
        let cs32 = segment(CODE32);
        assert!(cs32.db && !cs32.l);
        let ds = segment(DATA);
        assert_eq!((ds.kind, ds.limit), (0x3, 0xffff_ffff));
        let tr = segment(TSS);
        assert!(!tr.s && tr.present);
        assert_eq!((tr.kind, tr.limit), (0xb, 0x67));
    }
}
