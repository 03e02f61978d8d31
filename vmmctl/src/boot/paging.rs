//! Identity page tables for the 64-bit entry: 2 MiB pages covering the low
//! 4 GiB, enough for the kernel, the zero page, the command line and the
//! initrd wherever vmmctl puts them. The kernel builds its own at once.

use anyhow::{Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::layout::{PD, PDPT, PML4};

const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;
const GIB_COVERED: u64 = 4;

/// Writes the tables and returns the value for CR3.
pub fn write(mem: &GuestMemoryMmap) -> Result<u64> {
    let w = |val: u64, at: u64| {
        mem.write_obj(val, GuestAddress(at))
            .context("writing the boot page tables")
    };
    w(PDPT | PRESENT_RW, PML4)?;
    for gib in 0..GIB_COVERED {
        let pd = PD + gib * 0x1000;
        w(pd | PRESENT_RW, PDPT + gib * 8)?;
        for i in 0..512 {
            let phys = (gib << 30) | (i << 21);
            w(phys | PRESENT_RW | PAGE_SIZE_2M, pd + i * 8)?;
        }
    }
    Ok(PML4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    /// Walks the tables as the MMU would for `virt`.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, virt: u64) -> u64 {
        let entry = |table: u64, idx: u64| -> u64 {
            mem.read_obj::<u64>(GuestAddress(table + idx * 8)).unwrap()
        };
        let pml4e = entry(cr3, (virt >> 39) & 0x1ff);
        let pdpte = entry(pml4e & !0xfff, (virt >> 30) & 0x1ff);
        let pde = entry(pdpte & !0xfff, (virt >> 21) & 0x1ff);
        assert_eq!(pde & (PRESENT_RW | PAGE_SIZE_2M), PRESENT_RW | PAGE_SIZE_2M);
        (pde & !0x1f_ffff & !0xfff) | (virt & 0x1f_ffff)
    }

    #[test]
    fn low_4g_is_identity_mapped() {
        let mem = memory::create(&[(0, 16 << 20)]).unwrap();
        let cr3 = write(&mem).unwrap();
        for virt in [0, 0x7000, 0x10_0000, 0x1234_5678, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, virt), virt, "{virt:#x}");
        }
    }
}
