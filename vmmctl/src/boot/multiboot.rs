//! Multiboot (version 1) kernels, as QEMU's `-kernel` takes them: a header
//! in the first 8 KiB, an ELF32 image (or the header's a.out addresses),
//! entry in 32-bit protected mode with EAX = 0x2BADB002 and EBX pointing to
//! the multiboot information (memory, memory map, command line, modules).

use anyhow::{bail, ensure, Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::e820::E820Entry;
use crate::boot::layout::{CMDLINE, HIGH_MEMORY, MULTIBOOT_INFO};

const HEADER_MAGIC: u32 = 0x1bad_b002;
/// What the kernel finds in EAX.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
const SEARCH_LEN: usize = 8192;

/// Header flags. Bits 0..16 are requirements: a loader must refuse a
/// kernel asking for one it does not know.
const FLAG_PAGE_ALIGN_MODULES: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_VIDEO_MODE: u32 = 1 << 2;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
const KNOWN_REQUIREMENTS: u32 = FLAG_PAGE_ALIGN_MODULES | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;

/// multiboot_info.flags
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODULES: u32 = 1 << 3;
const INFO_MEMORY_MAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// Where the pieces of the information go, after the 128-byte structure.
const MMAP_OFFSET: u64 = 0x100;
const MODULES_OFFSET: u64 = 0x400;
const STRINGS_OFFSET: u64 = 0x500;
const LOADER_NAME: &[u8] = b"vmmctl\0";

/// A multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub offset: usize,
    pub flags: u32,
    /// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr
    pub aout: Option<[u32; 5]>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

/// The multiboot header, if the image has one: 4-byte aligned in the first
/// 8 KiB, magic + flags + checksum summing to zero.
pub fn find_header(image: &[u8]) -> Option<Header> {
    let end = image.len().min(SEARCH_LEN);
    (0..end.saturating_sub(11)).step_by(4).find_map(|off| {
        let (magic, flags, sum) = (
            u32_at(image, off)?,
            u32_at(image, off + 4)?,
            u32_at(image, off + 8)?,
        );
        if magic != HEADER_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            return None;
        }
        let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
            let mut f = [0u32; 5];
            for (i, v) in f.iter_mut().enumerate() {
                *v = u32_at(image, off + 12 + 4 * i)?;
            }
            Some(f)
        } else {
            None
        };
        Some(Header {
            offset: off,
            flags,
            aout,
        })
    })
}

/// Below 1 MiB live vmmctl's GDT, page tables, MP and ACPI tables and the
/// multiboot information; like GRUB, refuse kernels that load there.
fn check_load_address(addr: u64) -> Result<()> {
    ensure!(
        addr >= HIGH_MEMORY,
        "the multiboot kernel loads at {addr:#x}; vmmctl (like GRUB) loads kernels at 1 MiB \
         or above only"
    );
    Ok(())
}

/// Copies the kernel into guest memory; returns (entry, end of image).
pub fn load_kernel(mem: &GuestMemoryMmap, image: &[u8], hdr: &Header) -> Result<(u64, u64)> {
    let unknown = hdr.flags & 0xffff & !KNOWN_REQUIREMENTS;
    ensure!(
        unknown == 0,
        "the multiboot kernel requires features vmmctl does not provide (flags {unknown:#x})"
    );
    match hdr.aout {
        Some(a) => load_aout(mem, image, hdr.offset, a),
        None => load_elf32(mem, image),
    }
}

/// The a.out kludge: the header says which file bytes go where.
fn load_aout(mem: &GuestMemoryMmap, image: &[u8], off: usize, a: [u32; 5]) -> Result<(u64, u64)> {
    let [header_addr, load_addr, load_end, bss_end, entry] = a;
    ensure!(
        header_addr >= load_addr,
        "bad multiboot a.out header: header_addr below load_addr"
    );
    let file_start = off
        .checked_sub((header_addr - load_addr) as usize)
        .context("bad multiboot a.out header: load_addr before the file start")?;
    let len = match load_end {
        0 => image.len() - file_start,
        end => end
            .checked_sub(load_addr)
            .context("load_end_addr below load_addr")? as usize,
    };
    let bytes = image
        .get(file_start..file_start + len)
        .context("multiboot a.out header points past the end of the file")?;
    check_load_address(load_addr.into())?;
    mem.write_slice(bytes, GuestAddress(load_addr.into()))
        .context("the multiboot kernel does not fit in guest memory")?;
    let end = u64::from(load_addr) + len as u64;
    let bss_end = u64::from(bss_end).max(end);
    zero(mem, end, bss_end)?;
    Ok((entry.into(), bss_end))
}

fn zero(mem: &GuestMemoryMmap, from: u64, to: u64) -> Result<()> {
    let zeros = vec![0u8; (to - from) as usize];
    mem.write_slice(&zeros, GuestAddress(from))
        .context("the kernel's bss does not fit in guest memory")
}

/// An ELF32 x86 executable: each PT_LOAD segment at its physical address.
fn load_elf32(mem: &GuestMemoryMmap, image: &[u8]) -> Result<(u64, u64)> {
    const PT_LOAD: u32 = 1;
    const EM_386: u16 = 3;
    ensure!(
        image.get(..4) == Some(b"\x7fELF"),
        "the multiboot kernel is not ELF and its header has no a.out addresses (flag 16)"
    );
    ensure!(
        image.get(4) == Some(&1) && u16_at(image, 18) == Some(EM_386),
        "the multiboot kernel is not a 32-bit x86 ELF (vmmctl, like QEMU, loads ELF32)"
    );
    let bad = || anyhow::anyhow!("truncated ELF header in the multiboot kernel");
    let entry = u32_at(image, 24).ok_or_else(bad)?;
    let phoff = u32_at(image, 28).ok_or_else(bad)? as usize;
    let phentsize = u16_at(image, 42).ok_or_else(bad)? as usize;
    let phnum = u16_at(image, 44).ok_or_else(bad)? as usize;
    let mut end = 0u64;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let field = |n: usize| u32_at(image, ph + 4 * n).ok_or_else(bad);
        if field(0)? != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (field(1)?, field(3)?, field(4)?, field(5)?);
        check_load_address(paddr.into())?;
        let bytes = image
            .get(offset as usize..(offset as usize + filesz as usize))
            .context("an ELF segment runs past the end of the multiboot kernel")?;
        mem.write_slice(bytes, GuestAddress(paddr.into()))
            .with_context(|| format!("ELF segment at {paddr:#x} is outside guest memory"))?;
        let seg_end = u64::from(paddr) + u64::from(memsz.max(filesz));
        zero(mem, u64::from(paddr) + u64::from(filesz), seg_end)?;
        end = end.max(seg_end);
    }
    ensure!(end > 0, "the multiboot ELF kernel has no loadable segment");
    Ok((entry.into(), end))
}

/// A module to pass: its bytes were loaded at `start`.
pub struct Module {
    pub start: u64,
    pub len: u64,
    pub name: String,
}

/// Writes the multiboot information and returns its address (for EBX).
pub fn write_info(
    mem: &GuestMemoryMmap,
    e820: &[E820Entry],
    cmdline: &str,
    modules: &[Module],
) -> Result<u64> {
    let w32 = |v: u32, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .context("writing the multiboot information")
    };
    let base = MULTIBOOT_INFO;
    mem.write_slice(&[0u8; 128], GuestAddress(base))?;
    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MEMORY_MAP | INFO_LOADER_NAME;

    // mem_lower/mem_upper: KiB of RAM from 0 and from 1 MiB to the first
    // hole, taken from the e820 map.
    let ram_at = |addr: u64| {
        e820.iter()
            .find(|e| e.addr == addr && e.kind == crate::boot::e820::E820Kind::Ram)
            .map_or(0, |e| e.size)
    };
    w32((ram_at(0) >> 10) as u32, base + 4)?;
    w32((ram_at(0x10_0000) >> 10) as u32, base + 8)?;

    let mut text = cmdline.as_bytes().to_vec();
    text.push(0);
    mem.write_slice(&text, GuestAddress(CMDLINE))?;
    w32(CMDLINE as u32, base + 16)?;

    let mut strings = base + STRINGS_OFFSET;
    if !modules.is_empty() {
        flags |= INFO_MODULES;
        for (i, m) in modules.iter().enumerate() {
            let entry = base + MODULES_OFFSET + 16 * i as u64;
            let mut name = m.name.as_bytes().to_vec();
            name.push(0);
            mem.write_slice(&name, GuestAddress(strings))?;
            w32(u32::try_from(m.start)?, entry)?;
            w32(u32::try_from(m.start + m.len)?, entry + 4)?;
            w32(strings as u32, entry + 8)?;
            w32(0, entry + 12)?;
            strings += name.len() as u64;
        }
        w32(modules.len() as u32, base + 20)?;
        w32((base + MODULES_OFFSET) as u32, base + 24)?;
    }

    // Memory map: entries of 24 bytes, each prefixed by its size (20).
    for (i, e) in e820.iter().enumerate() {
        let at = base + MMAP_OFFSET + 24 * i as u64;
        w32(20, at)?;
        mem.write_obj(e.addr, GuestAddress(at + 4))?;
        mem.write_obj(e.size, GuestAddress(at + 12))?;
        w32(e.kind as u32, at + 20)?;
    }
    w32(24 * e820.len() as u32, base + 44)?;
    w32((base + MMAP_OFFSET) as u32, base + 48)?;

    mem.write_slice(LOADER_NAME, GuestAddress(strings))?;
    w32(strings as u32, base + 64)?;
    ensure!(
        strings + LOADER_NAME.len() as u64 <= base + 0x1000,
        "module names too long for the multiboot information page"
    );
    w32(flags, base)?;
    Ok(base)
}

/// Page-aligns `addr` upwards (modules start on a page, as GRUB does).
pub fn page_align(addr: u64) -> u64 {
    (addr + 0xfff) & !0xfff
}

/// Checks the kernel will not be overwritten by vmmctl's structures.
pub fn check_placement(kernel_end: u64, low_ram_end: u64, module_len: u64) -> Result<()> {
    if page_align(kernel_end) + module_len > low_ram_end {
        bail!(
            "the multiboot kernel and its module need {} KiB: raise --mem",
            (page_align(kernel_end) + module_len) >> 10
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820;
    use crate::memory;

    /// A minimal ELF32 with one PT_LOAD segment at 1 MiB and a multiboot
    /// header at its start.
    fn elf32(flags: u32) -> Vec<u8> {
        let mut img = vec![0u8; 0x200];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = 1; // ELFCLASS32
        img[5] = 1;
        img[18..20].copy_from_slice(&3u16.to_le_bytes());
        img[24..28].copy_from_slice(&0x10_0010u32.to_le_bytes()); // entry
        img[28..32].copy_from_slice(&52u32.to_le_bytes()); // phoff
        img[42..44].copy_from_slice(&32u16.to_le_bytes());
        img[44..46].copy_from_slice(&1u16.to_le_bytes());
        let ph = [1u32, 0x100, 0x10_0000, 0x10_0000, 0x100, 0x2000];
        for (i, v) in ph.iter().enumerate() {
            img[52 + 4 * i..56 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        let sum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
        for (i, v) in [HEADER_MAGIC, flags, sum].iter().enumerate() {
            img[0x100 + 4 * i..0x104 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        img[0x1f0] = 0xab; // a byte of the segment's code
        img
    }

    fn r32(mem: &GuestMemoryMmap, at: u64) -> u32 {
        mem.read_obj(GuestAddress(at)).unwrap()
    }

    #[test]
    fn header_is_found_only_with_a_valid_checksum() {
        let img = elf32(FLAG_MEMORY_INFO);
        let h = find_header(&img).unwrap();
        assert_eq!((h.offset, h.flags, h.aout), (0x100, FLAG_MEMORY_INFO, None));
        let mut broken = img.clone();
        broken[0x108] ^= 1;
        assert!(find_header(&broken).is_none());
        assert!(find_header(b"not a kernel").is_none());
    }

    #[test]
    fn elf32_segments_load_at_their_physical_address() {
        let mem = memory::create(&[(0, 16 << 20)]).unwrap();
        let img = elf32(0);
        let (entry, end) = load_kernel(&mem, &img, &find_header(&img).unwrap()).unwrap();
        assert_eq!((entry, end), (0x10_0010, 0x10_2000));
        let b: u8 = mem.read_obj(GuestAddress(0x10_00f0)).unwrap();
        assert_eq!(b, 0xab);
    }

    #[test]
    fn kernels_below_1mib_are_refused() {
        let mem = memory::create(&[(0, 16 << 20)]).unwrap();
        let mut img = elf32(0);
        img[52 + 12..52 + 16].copy_from_slice(&0x8000u32.to_le_bytes()); // p_paddr
        let e = load_kernel(&mem, &img, &find_header(&img).unwrap()).unwrap_err();
        assert!(e.to_string().contains("at 1 MiB or above"), "{e}");
    }

    #[test]
    fn unknown_requirements_and_64bit_elf_are_refused() {
        let mem = memory::create(&[(0, 16 << 20)]).unwrap();
        let img = elf32(1 << 5);
        let e = load_kernel(&mem, &img, &find_header(&img).unwrap()).unwrap_err();
        assert!(e.to_string().contains("requires features"), "{e}");
        let mut img64 = elf32(0);
        img64[4] = 2;
        let e = load_kernel(&mem, &img64, &find_header(&img64).unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a 32-bit x86 ELF"), "{e}");
    }

    #[test]
    fn info_has_memory_map_cmdline_and_module() {
        let mem = memory::create(&[(0, 64 << 20)]).unwrap();
        let map = e820::map(&[(0, 64 << 20)]);
        let module = Module {
            start: 0x20_0000,
            len: 0x1234,
            name: "initrd.img".into(),
        };
        let mbi = write_info(&mem, &map, "hello world", &[module]).unwrap();
        let flags = r32(&mem, mbi);
        let want = INFO_MEMORY | INFO_CMDLINE | INFO_MODULES | INFO_MEMORY_MAP | INFO_LOADER_NAME;
        assert_eq!(flags, want);
        assert_eq!(r32(&mem, mbi + 4), 0x9fc00 >> 10, "mem_lower KiB");
        assert_eq!(r32(&mem, mbi + 8), (63 << 20) >> 10, "mem_upper KiB");

        let mut cmd = [0u8; 12];
        mem.read_slice(&mut cmd, GuestAddress(r32(&mem, mbi + 16).into()))
            .unwrap();
        assert_eq!(&cmd, b"hello world\0");

        assert_eq!(r32(&mem, mbi + 20), 1, "mods_count");
        let m = u64::from(r32(&mem, mbi + 24));
        assert_eq!((r32(&mem, m), r32(&mem, m + 4)), (0x20_0000, 0x20_1234));
        let mut name = [0u8; 11];
        mem.read_slice(&mut name, GuestAddress(r32(&mem, m + 8).into()))
            .unwrap();
        assert_eq!(&name, b"initrd.img\0");

        let (len, addr) = (r32(&mem, mbi + 44), u64::from(r32(&mem, mbi + 48)));
        assert_eq!(len, 24 * 3);
        let third = addr + 48;
        assert_eq!(r32(&mem, third), 20, "entry size field");
        let base: u64 = mem.read_obj(GuestAddress(third + 4)).unwrap();
        let size: u64 = mem.read_obj(GuestAddress(third + 12)).unwrap();
        assert_eq!(
            (base, size, r32(&mem, third + 20)),
            (0x10_0000, (63 << 20), 1)
        );
    }
}
