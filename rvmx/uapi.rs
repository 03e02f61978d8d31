// SPDX-License-Identifier: GPL-2.0

//! The userspace ABI, generated from `uapi/rvmx.h` by `scripts/gen-uapi`
//! (the same file the userspace `uapi` crate uses, with its layout asserts).

#![allow(
    dead_code,
    unreachable_pub,
    non_camel_case_types,
    non_upper_case_globals,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!("../uapi/src/bindings.rs");

// SAFETY: `rvmx_vmx_caps` is `repr(C)` and made of `u32`/`u64` fields laid out
// without padding (the generated layout asserts pin every offset and the total
// size), so every byte is initialized.
unsafe impl kernel::transmute::AsBytes for rvmx_vmx_caps {}
