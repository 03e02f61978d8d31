//! MSRs set on every vCPU before it runs: what firmware leaves behind.

const IA32_TSC: u32 = 0x10;
const IA32_MISC_ENABLE: u32 = 0x1a0;
const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
const IA32_SYSENTER_CS: u32 = 0x174;
const IA32_SYSENTER_ESP: u32 = 0x175;
const IA32_SYSENTER_EIP: u32 = 0x176;
const STAR: u32 = 0xc000_0081;
const LSTAR: u32 = 0xc000_0082;
const CSTAR: u32 = 0xc000_0083;
const SYSCALL_MASK: u32 = 0xc000_0084;
const KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast string operations enabled, as firmware leaves it.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE: MTRRs on, all memory write-back by default.
/// Without it Linux treats RAM as uncached.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The list: the TSC starts at zero (so the guest's TSC counts cycles since
/// power-on, which `make bench` reads), syscall MSRs cleared.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (IA32_TSC, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (IA32_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}
