// SPDX-License-Identifier: GPL-2.0

//! The userspace ABI, generated from `uapi/rvmx.h` by `scripts/gen-uapi`
//! (the same file the userspace `uapi` crate uses, with its layout asserts).

#![allow(
    dead_code,
    unreachable_pub,
    non_camel_case_types,
    non_upper_case_globals,
    // bindgen's accessors for `struct rvmx_cpuid`'s flexible array.
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!("../uapi/src/bindings.rs");

/// Marks ABI structs as plain bytes in both directions.
macro_rules! plain_bytes {
    ($($t:ty),*) => {$(
        // SAFETY: the struct is `repr(C)` and made only of integer fields
        // (and arrays or structs of them) laid out without implicit padding,
        // which the generated layout asserts pin down: every byte is
        // initialized and every bit pattern is a valid value.
        unsafe impl kernel::transmute::AsBytes for $t {}
        // SAFETY: as above.
        unsafe impl kernel::transmute::FromBytes for $t {}
    )*};
}

plain_bytes!(
    rvmx_vmx_caps,
    rvmx_userspace_memory_region,
    rvmx_regs,
    rvmx_sregs,
    rvmx_cpuid_entry,
    rvmx_msr_entry,
    rvmx_msi,
    rvmx_lapic_state,
    rvmx_vcpu_events,
    rvmx_mp_state
);
