//! Builds the module's kernel-free files for the host so `cargo test` can
//! run their unit tests. The module tree is mirrored so that their `super::`
//! paths resolve as in the kernel build.

#![cfg(test)]
// Items only the kernel side uses.
#![allow(dead_code)]

#[path = "../vmx"]
mod vmx {
    pub(crate) mod caps;
    pub(crate) mod msr;
}
