// SPDX-License-Identifier: GPL-2.0

//! The guest registers the VMCS does not hold, in the layout `vmenter.S`
//! loads and stores (offsets there must match).

/// General-purpose registers in instruction-encoding order (0 = RAX,
/// 1 = RCX, ... 15 = R15), so an exit qualification's register number
/// indexes `gpr` directly; index 4 (RSP) is unused: RSP is in the VMCS.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct GuestRegs {
    pub(crate) gpr: [u64; 16],
    pub(crate) cr2: u64,
}

pub(crate) const RAX: usize = 0;
pub(crate) const RCX: usize = 1;
pub(crate) const RDX: usize = 2;
pub(crate) const RBX: usize = 3;
pub(crate) const RSP: usize = 4;
pub(crate) const RBP: usize = 5;
pub(crate) const RSI: usize = 6;
pub(crate) const RDI: usize = 7;

// vmenter.S: R_R15 = 120, R_CR2 = 128.
const _: () = assert!(core::mem::offset_of!(GuestRegs, cr2) == 128);
const _: () = assert!(core::mem::size_of::<GuestRegs>() == 136);

extern "C" {
    /// `vmenter.S`: enters the guest; 0 after a VM exit, 1 if the entry
    /// instruction failed.
    pub(crate) fn rvmx_vmenter(regs: *mut GuestRegs, launched: u32) -> u32;
    /// The VM-exit landing point (HOST_RIP).
    pub(crate) fn rvmx_vmexit();
}
