//! Linux's x86 boot protocol (Documentation/arch/x86/boot.rst) with the
//! 64-bit entry: the protected-mode kernel of a bzImage loaded at 1 MiB,
//! the zero page (boot_params) with the setup header, command line, initrd
//! and e820 map, and entry at load address + 0x200 in long mode.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use anyhow::{bail, Context, Result};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{load_cmdline, BzImage, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::e820::E820Entry;
use crate::boot::layout::{CMDLINE, CMDLINE_MAX, HIGH_MEMORY, ZERO_PAGE};

/// "HdrS" at offset 0x202.
const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG: u16 = 0xaa55;
/// Protocol 2.12 (Linux 3.8) introduced xloadflags and with it the
/// promise of a 64-bit entry point.
const MIN_PROTOCOL: u16 = 0x020c;
const XLF_KERNEL_64: u16 = 1 << 0;
const LOADED_HIGH: u8 = 1 << 0;
/// "Undefined" boot loader ID: no registered ID of our own.
const LOADER_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry point from the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// The setup header starts at offset 0x1f1 of the image.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;

/// The loaded kernel: where to enter and where its boot_params are.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    pub zero_page: u64,
}

/// Reads the setup header and checks that vmmctl can boot this kernel.
pub fn read_header(kernel: &mut File) -> Result<setup_header> {
    let mut hdr = setup_header::default();
    let size = std::mem::size_of::<setup_header>();
    let mut raw = vec![0u8; size];
    kernel.seek(SeekFrom::Start(SETUP_HEADER_OFFSET))?;
    kernel
        .read_exact(&mut raw)
        .context("file too short for a bzImage setup header")?;
    // SAFETY: setup_header is plain integers (repr(C, packed)) and `raw`
    // holds exactly its size.
    unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), &mut hdr as *mut _ as *mut u8, size) };
    check_header(&hdr)?;
    Ok(hdr)
}

/// The boot-protocol checks, on a parsed header.
pub fn check_header(hdr: &setup_header) -> Result<()> {
    let (magic, flag, version) = (hdr.header, hdr.boot_flag, hdr.version);
    if magic != HDRS_MAGIC || flag != BOOT_FLAG {
        bail!(
            "not a Linux bzImage (no \"HdrS\" setup header at offset 0x202); \
             vmmctl boots bzImages and multiboot ELF kernels"
        );
    }
    if version < MIN_PROTOCOL || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        bail!(
            "boot protocol {}.{:02} {}: vmmctl enters Linux at its 64-bit entry point, \
             which needs protocol 2.12 (Linux 3.8) or later on an x86-64 kernel",
            version >> 8,
            version & 0xff,
            if version < MIN_PROTOCOL {
                "is too old"
            } else {
                "has no 64-bit entry point (32-bit kernel?)"
            }
        );
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        bail!("a zImage (loaded below 1 MiB) is not supported: build a bzImage");
    }
    Ok(())
}

/// Where the initrd goes: as high as the kernel allows and RAM reaches,
/// page aligned, but above the kernel's decompression area.
pub fn initrd_address(
    size: u64,
    initrd_addr_max: u64,
    low_ram_end: u64,
    kernel_end: u64,
) -> Result<u64> {
    let top = initrd_addr_max.saturating_add(1).min(low_ram_end);
    let addr = top.checked_sub(size).map(|a| a & !0xfff);
    match addr {
        Some(a) if a >= kernel_end => Ok(a),
        _ => bail!(
            "the initrd ({} KiB) does not fit between the kernel (ends at {:#x}) and {:#x}: \
             raise --mem",
            size >> 10,
            kernel_end,
            top
        ),
    }
}

/// The zero page for a kernel with `hdr`, as this VMM fills it.
pub fn boot_params(
    hdr: &setup_header,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
    acpi_rsdp: Option<u64>,
) -> Result<boot_params> {
    let mut params = boot_params {
        hdr: *hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    // cmdline_size stays the kernel's: it is its limit, read by loaders.
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = u32::try_from(addr).context("initrd above 4 GiB")?;
        params.hdr.ramdisk_size = u32::try_from(size).context("initrd of 4 GiB or more")?;
    }
    if e820.len() > params.e820_table.len() {
        bail!("{} e820 entries do not fit in the zero page", e820.len());
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = e820.len() as u8;
    if let Some(rsdp) = acpi_rsdp {
        params.acpi_rsdp_addr = rsdp;
    }
    Ok(params)
}

/// The command line, checked against what this kernel accepts.
pub fn cmdline(text: &str, hdr: &setup_header) -> Result<Cmdline> {
    // Kernels before protocol 2.06 do not say; 255 was their limit.
    let max = match hdr.cmdline_size {
        0 => 255,
        n => n as usize,
    }
    .min(CMDLINE_MAX - 1);
    if text.len() > max {
        bail!(
            "the kernel command line is {} bytes; this kernel accepts at most {max}",
            text.len()
        );
    }
    // Capacity counts the terminating NUL.
    Cmdline::try_from(text, max + 1).map_err(|e| anyhow::anyhow!("bad kernel command line: {e}"))
}

/// Everything the boot needs besides the kernel file.
pub struct Setup<'a> {
    pub cmdline: &'a str,
    pub initrd: Option<&'a mut File>,
    pub e820: &'a [E820Entry],
    pub low_ram_end: u64,
    pub acpi_rsdp: Option<u64>,
}

/// Loads the bzImage, command line and initrd; writes the zero page.
pub fn load(mem: &GuestMemoryMmap, kernel: &mut File, setup: Setup<'_>) -> Result<Loaded> {
    let hdr = read_header(kernel)?;
    let cmdline = cmdline(setup.cmdline, &hdr)?;
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(HIGH_MEMORY)))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("loading the kernel (does it fit in --mem?)")?;
    load_cmdline(mem, GuestAddress(CMDLINE), &cmdline)
        .map_err(|e| anyhow::anyhow!("writing the command line: {e}"))?;

    let initrd = match setup.initrd {
        None => None,
        Some(file) => {
            let size = file.metadata()?.len();
            // The kernel decompresses itself into init_size bytes from its
            // load address: keep the initrd above that.
            let kernel_end = loaded.kernel_load.raw_value() + u64::from(hdr.init_size);
            let addr = initrd_address(
                size,
                u64::from(hdr.initrd_addr_max),
                setup.low_ram_end,
                kernel_end,
            )?;
            file.seek(SeekFrom::Start(0))?;
            mem.read_exact_volatile_from(GuestAddress(addr), file, size as usize)
                .context("copying the initrd into guest memory")?;
            Some((addr, size))
        }
    };
    let params = boot_params(&hdr, initrd, setup.e820, setup.acpi_rsdp)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .context("writing the zero page")?;
    Ok(Loaded {
        entry: loaded.kernel_load.raw_value() + ENTRY_64_OFFSET,
        zero_page: ZERO_PAGE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820;

    fn header() -> setup_header {
        setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            xloadflags: XLF_KERNEL_64,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
            code32_start: 0x10_0000,
            ..Default::default()
        }
    }

    #[test]
    fn header_checks_name_the_problem() {
        assert!(check_header(&header()).is_ok());
        let e = check_header(&setup_header::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Linux bzImage"), "{e}");
        let old = setup_header {
            version: 0x0206,
            ..header()
        };
        let e = check_header(&old).unwrap_err().to_string();
        assert!(e.contains("2.06 is too old"), "{e}");
        let no64 = setup_header {
            xloadflags: 0,
            ..header()
        };
        let e = check_header(&no64).unwrap_err().to_string();
        assert!(e.contains("no 64-bit entry point"), "{e}");
    }

    #[test]
    fn boot_params_fields() {
        let map = e820::map(&[(0, 256 << 20)]);
        let p = boot_params(&header(), Some((0x0f00_0000, 0x1234)), &map, Some(0xe0000)).unwrap();
        let (ptr, size, loader) = (p.hdr.cmd_line_ptr, p.hdr.cmdline_size, p.hdr.type_of_loader);
        assert_eq!((ptr, size, loader), (CMDLINE as u32, 2047, 0xff));
        let (ri, rs) = (p.hdr.ramdisk_image, p.hdr.ramdisk_size);
        assert_eq!((ri, rs), (0x0f00_0000, 0x1234));
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        let (a, s, t) = (last.addr, last.size, last.r#type);
        assert_eq!((a, s, t), (0x10_0000, (256 << 20) - 0x10_0000, 1));
        let (magic, flag, rsdp) = (p.hdr.header, p.hdr.boot_flag, p.acpi_rsdp_addr);
        assert_eq!((magic, flag, rsdp), (HDRS_MAGIC, BOOT_FLAG, 0xe0000));
    }

    #[test]
    fn initrd_goes_high_aligned_and_below_the_kernels_limit() {
        // Limited by RAM.
        assert_eq!(
            initrd_address(0x1800, 0x7fff_ffff, 0x1000_0000, 0x100_0000).unwrap(),
            0x1000_0000 - 0x2000
        );
        // Limited by initrd_addr_max (inclusive).
        assert_eq!(
            initrd_address(0x1000, 0x37ff_ffff, 0x8000_0000, 0x100_0000).unwrap(),
            0x3800_0000 - 0x1000
        );
        let e = initrd_address(0x100_0000, 0x7fff_ffff, 0x180_0000, 0x100_0000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("raise --mem"), "{e}");
    }

    #[test]
    fn cmdline_longer_than_the_kernel_accepts_is_refused() {
        let hdr = setup_header {
            cmdline_size: 16,
            ..header()
        };
        assert!(cmdline("console=ttyS0", &hdr).is_ok());
        let e = cmdline("console=ttyS0 quiet loglevel=3", &hdr)
            .unwrap_err()
            .to_string();
        assert!(e.contains("accepts at most 16"), "{e}");
        let c = cmdline("console=ttyS0 quiet", &header()).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 quiet"
        );
    }
}
