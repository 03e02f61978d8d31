// SPDX-License-Identifier: GPL-2.0

//! Intel VMX: capabilities, the instructions, and root operation on the host.

pub(crate) mod caps;
pub(crate) mod controls;
pub(crate) mod current;
pub(crate) mod host;
pub(crate) mod instr;
pub(crate) mod msr;
pub(crate) mod root;
pub(crate) mod segment;
pub(crate) mod vmcs;
pub(crate) mod vpid;
