//! Putting a kernel into guest memory and computing the boot vCPU's first
//! state: a Linux bzImage (64-bit boot protocol) or a multiboot kernel.

pub mod acpi;
pub mod cpuid;
pub mod e820;
mod gdt;
pub mod layout;
mod linux;
pub mod mptable;
mod msrs;
mod multiboot;
mod paging;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::hypervisor::CpuState;
use crate::memory;
pub use msrs::boot_msrs;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is always set; interrupts start disabled.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// What to boot.
pub struct BootConfig<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub cpus: u8,
    pub ram: &'a [(u64, u64)],
    /// The hypervisor emulates 8259 PICs (the ACPI tables say so).
    pub legacy_pic: bool,
}

/// The kinds of kernel vmmctl boots.
#[derive(Debug, PartialEq, Eq)]
enum KernelKind {
    BzImage,
    Multiboot,
}

/// Tells the formats apart from the first 8 KiB of the file.
fn kind_of(head: &[u8]) -> Option<KernelKind> {
    if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelKind::BzImage)
    } else if multiboot::find_header(head).is_some() {
        Some(KernelKind::Multiboot)
    } else {
        None
    }
}

fn open(path: &Path, what: &str) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open the {what} {}", path.display()))
}

/// Loads the kernel (and initrd), writes the tables every guest gets (GDT,
/// MP table) and returns the boot vCPU's state.
pub fn load(mem: &GuestMemoryMmap, cfg: &BootConfig<'_>) -> Result<CpuState> {
    let mut kernel = open(cfg.kernel, "kernel")?;
    let mut head = Vec::with_capacity(8192);
    (&mut kernel)
        .take(8192)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {}", cfg.kernel.display()))?;
    let kind = kind_of(&head).with_context(|| {
        format!(
            "{} is neither a Linux bzImage (no \"HdrS\" header at 0x202) nor a multiboot \
             kernel (no multiboot header in its first 8 KiB)",
            cfg.kernel.display()
        )
    })?;

    let e820 = e820::map(cfg.ram);
    let (gdtr, idtr) = gdt::write(mem)?;
    mptable::write(mem, cfg.cpus)?;
    let rsdp = acpi::write(mem, cfg.cpus, cfg.legacy_pic)?;
    let mut state = CpuState {
        gdt: gdtr,
        idt: idtr,
        rflags: RFLAGS_RESERVED,
        ds: gdt::segment(gdt::DATA),
        es: gdt::segment(gdt::DATA),
        fs: gdt::segment(gdt::DATA),
        gs: gdt::segment(gdt::DATA),
        ss: gdt::segment(gdt::DATA),
        tr: gdt::segment(gdt::TSS),
        ..Default::default()
    };
    let low_ram_end = memory::low_ram_end(cfg.ram);
    match kind {
        KernelKind::BzImage => {
            let mut initrd = cfg.initrd.map(|p| open(p, "initrd")).transpose()?;
            let loaded = linux::load(
                mem,
                &mut kernel,
                linux::Setup {
                    cmdline: cfg.cmdline,
                    initrd: initrd.as_mut(),
                    e820: &e820,
                    low_ram_end,
                    acpi_rsdp: Some(rsdp),
                },
            )?;
            state.cs = gdt::segment(gdt::CODE64);
            state.rip = loaded.entry;
            state.rsi = loaded.zero_page;
            state.rsp = layout::BOOT_STACK;
            state.rbp = layout::BOOT_STACK;
            state.cr3 = paging::write(mem)?;
            state.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
            state.cr4 = CR4_PAE;
            state.efer = EFER_LME | EFER_LMA;
        }
        KernelKind::Multiboot => {
            let image = std::fs::read(cfg.kernel)
                .with_context(|| format!("cannot read {}", cfg.kernel.display()))?;
            let hdr = multiboot::find_header(&image).context("multiboot header vanished")?;
            let (entry, end) = multiboot::load_kernel(mem, &image, &hdr)?;
            let mut modules = Vec::new();
            if let Some(path) = cfg.initrd {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read the initrd {}", path.display()))?;
                multiboot::check_placement(end, low_ram_end, bytes.len() as u64)?;
                let start = multiboot::page_align(end);
                vm_memory::Bytes::write_slice(mem, &bytes, GuestAddress(start))
                    .context("copying the multiboot module")?;
                modules.push(multiboot::Module {
                    start,
                    len: bytes.len() as u64,
                    name: path.display().to_string(),
                });
            }
            let info = multiboot::write_info(mem, &e820, cfg.cmdline, &modules)?;
            state.cs = gdt::segment(gdt::CODE32);
            state.rip = entry;
            state.rax = u64::from(multiboot::BOOTLOADER_MAGIC);
            state.rbx = info;
            state.cr0 = CR0_PE | CR0_ET | CR0_NE;
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_kinds_are_told_apart() {
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kind_of(&bz), Some(KernelKind::BzImage));
        let mut mb = vec![0u8; 64];
        let magic: u32 = 0x1bad_b002;
        mb[8..12].copy_from_slice(&magic.to_le_bytes());
        mb[16..20].copy_from_slice(&0u32.wrapping_sub(magic).to_le_bytes());
        assert_eq!(kind_of(&mb), Some(KernelKind::Multiboot));
        assert_eq!(kind_of(b"#!/bin/sh\necho not a kernel\n"), None);
    }
}
