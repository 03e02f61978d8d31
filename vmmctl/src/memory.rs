//! Guest RAM: its layout around the MMIO hole, and the host mapping.

use anyhow::{bail, Context, Result};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::boot::layout::{FOUR_GIB, HIGH_MEMORY, MMIO_HOLE};

/// The smallest guest vmmctl builds: low memory, page tables and a small
/// kernel above 1 MiB.
pub const MIN_MEMORY: u64 = 16 << 20;

/// The guest-physical RAM ranges for `size` bytes: below the MMIO hole,
/// and what does not fit there from 4 GiB up.
pub fn ram_ranges(size: u64) -> Result<Vec<(u64, u64)>> {
    if size < MIN_MEMORY {
        bail!(
            "--mem {} MiB is too small: vmmctl needs at least {} MiB",
            size >> 20,
            MIN_MEMORY >> 20
        );
    }
    if size % 4096 != 0 {
        bail!("--mem must be a multiple of 4 KiB (got {size} bytes)");
    }
    Ok(if size <= MMIO_HOLE {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_HOLE), (FOUR_GIB, size - MMIO_HOLE)]
    })
}

/// The end of RAM below the MMIO hole.
pub fn low_ram_end(ranges: &[(u64, u64)]) -> u64 {
    ranges
        .first()
        .map_or(HIGH_MEMORY, |&(start, len)| start + len)
}

/// Maps anonymous host memory for the guest (reserved lazily: untouched
/// pages cost nothing).
pub fn create(ranges: &[(u64, u64)]) -> Result<GuestMemoryMmap> {
    let regions: Vec<_> = ranges
        .iter()
        .map(|&(start, len)| Ok((GuestAddress(start), usize::try_from(len)?)))
        .collect::<Result<_>>()?;
    GuestMemoryMmap::from_ranges(&regions).context("cannot map guest memory (see --mem)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(ram_ranges(256 << 20).unwrap(), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let r = ram_ranges(4 << 30).unwrap();
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(low_ram_end(&r), 3 << 30);
    }

    #[test]
    fn tiny_or_unaligned_sizes_are_refused() {
        let e = ram_ranges(1 << 20).unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
        assert!(ram_ranges((64 << 20) + 1).is_err());
    }
}
