// SPDX-License-Identifier: GPL-2.0

//! The guest's CPUID: the table user space set (`RVMX_SET_CPUID`), or,
//! until it sets one, the host's values filtered by `exit::cpuid::filter`.
//! Also `RVMX_GET_SUPPORTED_CPUID`.

use kernel::{
    prelude::*,
    uaccess::{UserPtr, UserSlice},
};

use crate::{exit::cpuid, uapi, vmx::instr};

use super::regs::{RAX, RBX, RCX, RDX};

/// `struct rvmx_cpuid`'s header: nent and padding.
const HEADER: usize = 8;
const ENTRY: usize = size_of::<uapi::rvmx_cpuid_entry>();

fn host(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (a, b, c, d) = instr::cpuid(leaf, subleaf);
    [a, b, c, d]
}

/// The host's TSC frequency, which is also the guest's.
fn tsc_khz() -> u32 {
    // SAFETY: `tsc_khz` is set during boot, before modules load.
    unsafe { kernel::bindings::tsc_khz }
}

impl super::Guest {
    /// The guest's CPUID: EAX/ECX select the leaf, EAX-EDX get the table's
    /// values (the host's, filtered, until the VMM sets a table).
    pub(crate) fn cpuid_instruction(&mut self, vcpu_id: u32) {
        let r = &mut self.regs.gpr;
        let out = self.cpuid.lookup(r[RAX] as u32, r[RCX] as u32, vcpu_id);
        for (reg, value) in [RAX, RBX, RCX, RDX].into_iter().zip(out) {
            r[reg] = u64::from(value);
        }
    }
}

pub(crate) struct CpuidTable {
    entries: KVec<uapi::rvmx_cpuid_entry>,
}

impl CpuidTable {
    pub(crate) fn new() -> Self {
        Self {
            entries: KVec::new(),
        }
    }

    /// What the guest reads for `leaf`/`subleaf` on vCPU `vcpu_id`.
    pub(crate) fn lookup(&self, leaf: u32, subleaf: u32, vcpu_id: u32) -> [u32; 4] {
        if self.entries.is_empty() {
            return cpuid::filter(leaf, subleaf, host(leaf, subleaf), vcpu_id, tsc_khz());
        }
        let significant = uapi::RVMX_CPUID_FLAG_SIGNIFICANT_INDEX;
        self.entries
            .iter()
            .find(|e| e.function == leaf && (e.flags & significant == 0 || e.index == subleaf))
            .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
    }

    /// `RVMX_SET_CPUID`: replaces the table.
    pub(crate) fn set(&mut self, arg: usize) -> Result {
        let [nent, _padding]: [u32; 2] = crate::ioctl::read_arg(arg)?;
        if nent > uapi::RVMX_MAX_CPUID_ENTRIES {
            return Err(E2BIG);
        }
        let mut entries = KVec::with_capacity(nent as usize, GFP_KERNEL_ACCOUNT)?;
        let mut reader =
            UserSlice::new(UserPtr::from_addr(arg + HEADER), nent as usize * ENTRY).reader();
        for _ in 0..nent {
            let e: uapi::rvmx_cpuid_entry = reader.read()?;
            if e.flags & !uapi::RVMX_CPUID_FLAG_SIGNIFICANT_INDEX != 0 || e.padding != [0; 3] {
                return Err(EINVAL);
            }
            entries.push(e, GFP_KERNEL_ACCOUNT)?;
        }
        self.entries = entries;
        Ok(())
    }
}

/// `RVMX_GET_SUPPORTED_CPUID`: `nent` in is the room the caller has; out,
/// the entries written. With too little room, `nent` says how many there
/// are and the call fails with E2BIG.
pub(crate) fn get_supported(arg: usize) -> Result<isize> {
    let [room, _padding]: [u32; 2] = crate::ioctl::read_arg(arg)?;
    let mut all = KVec::new();
    let mut alloc = Ok(());
    cpuid::supported(host, tsc_khz(), |e| {
        let entry = uapi::rvmx_cpuid_entry {
            function: e.leaf,
            index: e.subleaf,
            flags: if e.significant {
                uapi::RVMX_CPUID_FLAG_SIGNIFICANT_INDEX
            } else {
                0
            },
            eax: e.regs[0],
            ebx: e.regs[1],
            ecx: e.regs[2],
            edx: e.regs[3],
            padding: [0; 3],
        };
        if alloc.is_ok() {
            alloc = all.push(entry, GFP_KERNEL);
        }
    });
    alloc?;
    let count = all.len() as u32;
    crate::ioctl::write_arg(arg, &[count, 0u32])?;
    if count > room {
        return Err(E2BIG);
    }
    let mut writer = UserSlice::new(UserPtr::from_addr(arg + HEADER), all.len() * ENTRY).writer();
    for e in &all {
        writer.write(e)?;
    }
    Ok(0)
}
