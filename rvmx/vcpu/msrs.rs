// SPDX-License-Identifier: GPL-2.0

//! `RVMX_GET_MSRS` and `RVMX_SET_MSRS`: the VMM reads and writes the MSRs
//! rvmx virtualizes (the same ones the guest's RDMSR/WRMSR reach, through
//! the same checks).

use kernel::{
    prelude::*,
    uaccess::{UserPtr, UserSlice},
};

use crate::{exit::msr, ioctl, uapi};

use super::Vcpu;

/// `struct rvmx_msrs`' header: nmsrs and pad.
const HEADER: usize = 8;
const ENTRY: usize = size_of::<uapi::rvmx_msr_entry>();

/// Reads the entries the caller passed (at most `RVMX_MAX_MSR_ENTRIES`).
fn read_entries(arg: usize) -> Result<KVec<uapi::rvmx_msr_entry>> {
    let [n, _pad]: [u32; 2] = ioctl::read_arg(arg)?;
    if n > uapi::RVMX_MAX_MSR_ENTRIES {
        return Err(E2BIG);
    }
    let mut entries = KVec::with_capacity(n as usize, GFP_KERNEL)?;
    let mut reader = UserSlice::new(UserPtr::from_addr(arg + HEADER), n as usize * ENTRY).reader();
    for _ in 0..n {
        entries.push(reader.read()?, GFP_KERNEL)?;
    }
    Ok(entries)
}

impl Vcpu {
    /// Returns how many MSRs were read, stopping at the first one rvmx does
    /// not virtualize, as KVM does; their values go back to the caller.
    pub(super) fn get_msrs(&self, arg: usize) -> Result<isize> {
        let mut entries = read_entries(arg)?;
        let mut st = self.state.lock();
        let done = self.with_vmcs(&mut st, |_, vmcs, guest| {
            let mut done = 0;
            for e in entries.iter_mut() {
                let Some(value) = msr::read(vmcs, guest, e.index) else {
                    break;
                };
                e.data = value;
                done += 1;
            }
            done
        })?;
        let mut writer = UserSlice::new(UserPtr::from_addr(arg + HEADER), done * ENTRY).writer();
        for e in &entries[..done] {
            writer.write(e)?;
        }
        Ok(done as isize)
    }

    /// Returns how many MSRs were written, stopping at the first one rvmx
    /// does not virtualize or whose value it refuses.
    pub(super) fn set_msrs(&self, arg: usize) -> Result<isize> {
        let entries = read_entries(arg)?;
        let mut st = self.state.lock();
        self.with_vmcs(&mut st, |vcpu, vmcs, guest| {
            entries
                .iter()
                .take_while(|e| msr::write(vcpu, vmcs, guest, e.index, e.data))
                .count() as isize
        })
    }
}
