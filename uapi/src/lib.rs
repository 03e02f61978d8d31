//! The rvmx userspace ABI.
//!
//! [`sys`] is generated from `uapi/rvmx.h` by `scripts/gen-uapi` (the kernel
//! module includes the same file); [`Rvmx`] makes the calls on `/dev/rvmx`.

pub mod sys {
    #![allow(non_camel_case_types, non_upper_case_globals, dead_code)]
    #![allow(clippy::missing_safety_doc)]
    include!("bindings.rs");

    /// A struct of the ABI made only of integers (and arrays of them): a
    /// copy is a valid value, and so is all-zero.
    ///
    /// # Safety
    ///
    /// Implement only for such structs; the generated layout asserts pin
    /// them.
    pub unsafe trait Plain: Copy {}

    macro_rules! plain {
        ($($t:ty),*) => {$(
            // SAFETY: generated from rvmx.h: integers and integer arrays.
            unsafe impl Plain for $t {}
        )*};
    }

    plain!(
        rvmx_regs,
        rvmx_sregs,
        rvmx_lapic_state,
        rvmx_vcpu_events,
        rvmx_mp_state
    );
}

mod device;
pub mod stats;
mod vm;

pub use device::{Rvmx, DEVICE_PATH};
pub use vm::{VcpuFd, VmFd};
