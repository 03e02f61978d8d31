// SPDX-License-Identifier: GPL-2.0

//! Model-specific registers rvmx reads, and the bits it tests in them
//! (SDM Vol. 3, Appendix A; Vol. 4, Chapter 2).
//!
//! Pure definitions: also compiled into the host unit tests.

pub(crate) const IA32_FEATURE_CONTROL: u32 = 0x3a;
/// Once set, IA32_FEATURE_CONTROL cannot change until reset.
pub(crate) const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
/// VMXON is allowed outside SMX operation.
pub(crate) const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;

pub(crate) const IA32_VMX_BASIC: u32 = 0x480;
pub(crate) const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub(crate) const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub(crate) const IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub(crate) const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub(crate) const IA32_VMX_MISC: u32 = 0x485;
pub(crate) const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub(crate) const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub(crate) const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub(crate) const IA32_VMX_CR4_FIXED1: u32 = 0x489;
pub(crate) const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub(crate) const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub(crate) const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub(crate) const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
pub(crate) const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
pub(crate) const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
