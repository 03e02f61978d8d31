//! The rvmx userspace ABI.
//!
//! [`sys`] is generated from `uapi/rvmx.h` by `scripts/gen-uapi` (the kernel
//! module includes the same file); [`Rvmx`] makes the calls on `/dev/rvmx`.

pub mod sys {
    #![allow(non_camel_case_types, non_upper_case_globals, dead_code)]
    #![allow(clippy::missing_safety_doc)]
    include!("bindings.rs");
}

mod device;
mod vm;

pub use device::{Rvmx, DEVICE_PATH};
pub use vm::{VcpuFd, VmFd};
