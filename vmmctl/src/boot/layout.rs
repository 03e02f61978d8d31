//! Where vmmctl puts things in guest-physical memory. Low memory follows a
//! PC: the real-mode area below 640 KiB, the EBDA, then the legacy video
//! and BIOS area up to 1 MiB, which is reserved in the e820 map.

/// GDT, then a null IDT.
pub const GDT: u64 = 0x500;
pub const IDT: u64 = 0x520;
/// Linux's boot_params ("zero page").
pub const ZERO_PAGE: u64 = 0x7000;
/// Stack of the boot vCPU at entry (the kernel sets its own at once).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Multiboot information structure and what it points to.
pub const MULTIBOOT_INFO: u64 = 0x9000;
/// Identity-mapping page tables: PML4, PDPT, then four page directories
/// of 2 MiB pages covering the low 4 GiB.
pub const PML4: u64 = 0x1_0000;
pub const PDPT: u64 = 0x1_1000;
pub const PD: u64 = 0x1_2000;
/// Kernel command line (both protocols).
pub const CMDLINE: u64 = 0x2_0000;
/// Room for the command line, up to the next structure.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of the Extended BIOS Data Area: RAM below it, reserved above.
/// Linux looks for the MP floating pointer in its first KiB.
pub const EBDA: u64 = 0x9_fc00;
/// ACPI tables, in the BIOS area where Linux also scans for the RSDP.
pub const ACPI_TABLES: u64 = 0xe_0000;
/// The first byte above the legacy area: kernels load here.
pub const HIGH_MEMORY: u64 = 0x10_0000;
/// Guest RAM stops below 3 GiB; the rest of the low 4 GiB is left for
/// MMIO (IOAPIC at 0xfec00000, local APIC at 0xfee00000, KVM's TSS) and
/// RAM beyond it continues at 4 GiB.
pub const MMIO_HOLE: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// Interrupt controllers' MMIO, as a PC has them.
pub const IOAPIC: u32 = 0xfec0_0000;
pub const LAPIC: u32 = 0xfee0_0000;
