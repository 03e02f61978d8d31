//! Builds the module's kernel-free files for the host so `cargo test` can
//! run their unit tests. The module tree is mirrored so that their `super::`
//! paths resolve as in the kernel build.

#![cfg(test)]
// Items only the kernel side uses.
#![allow(dead_code)]

#[path = "../arch.rs"]
mod arch;

#[path = "../lapic/mod.rs"]
mod lapic;

#[path = "../vmx"]
mod vmx {
    pub(crate) mod caps;
    pub(crate) mod controls;
    pub(crate) mod msr;
    pub(crate) mod segment;
    pub(crate) mod vmcs;
}

#[path = "../ept"]
mod ept {
    pub(crate) mod entry;
}

#[path = "../mem"]
mod mem {
    pub(crate) mod rules;
}

#[path = "../exit"]
mod exit {
    pub(crate) mod cpuid;
    pub(crate) mod decode;
    pub(crate) mod pagewalk;
    pub(crate) mod reason;
}

#[path = "../stats"]
mod stats {
    pub(crate) mod table;
}
