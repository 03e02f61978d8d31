//! vmmctl's own memory: resident set size minus the guest RAM pages that
//! are resident (those belong to the guest, and grow with what it
//! touches).

use std::fs;

use anyhow::{Context, Result};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Bytes resident for the whole process (VmRSS).
pub fn process_rss() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_vm_rss(&status).context("no VmRSS line in /proc/self/status")
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes of guest RAM resident on the host, page by page (mincore).
pub fn guest_resident(mem: &GuestMemoryMmap) -> Result<u64> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let mut resident = 0;
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = mem
            .get_host_address(region.start_addr())
            .context("guest region without a host mapping")?;
        let mut vec = vec![0u8; len.div_ceil(page as usize)];
        // SAFETY: `host..host+len` is one live mapping (the region), and
        // `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("mincore on guest memory");
        }
        resident += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page;
    }
    Ok(resident)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn parses_vm_rss() {
        let s = "Name:\tvmmctl\nVmPeak:\t  9 kB\nVmRSS:\t    2048 kB\nRssAnon: 1 kB\n";
        assert_eq!(parse_vm_rss(s), Some(2 << 20));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn touched_guest_pages_count_as_resident() {
        let mem = crate::memory::create(&[(0, 16 << 20)]).unwrap();
        let before = guest_resident(&mem).unwrap();
        for i in 0..10u64 {
            mem.write_obj(1u8, GuestAddress(i * 0x1000)).unwrap();
        }
        let after = guest_resident(&mem).unwrap();
        assert!(after >= before + 10 * 4096, "{before} -> {after}");
        assert!(after < 16 << 20);
    }
}
