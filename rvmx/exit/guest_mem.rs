// SPDX-License-Identifier: GPL-2.0

//! Reading and writing guest memory by guest-linear address, for emulation
//! (instruction fetch, string port I/O). Runs outside the VMX window: it
//! takes the VM's memory lock and copies from/to the VMM's mapping of the
//! slot.

use kernel::{prelude::*, uaccess::UserSlice};

use crate::vcpu::Vcpu;

use super::pagewalk::{self, Paging};

/// The user address of guest-physical `gpa`, if a slot holds it (and, for
/// `write`, the slot is writable).
fn user_addr(vcpu: &Vcpu, gpa: u64, write: bool) -> Option<usize> {
    let (uaddr, writable) = vcpu.vm.mem.lock().translate(gpa)?;
    (!write || writable).then_some(uaddr as usize)
}

fn read_phys(vcpu: &Vcpu, gpa: u64, buf: &mut [u8]) -> Option<()> {
    let uaddr = user_addr(vcpu, gpa, false)?;
    UserSlice::new(UserPtr::from_addr(uaddr), buf.len())
        .reader()
        .read_slice(buf)
        .ok()
}

/// Splits `[la, la + len)` into pieces within one page each, and hands
/// each piece's guest-physical address and range in the buffer to `f`.
fn for_each_page(
    vcpu: &Vcpu,
    paging: &Paging,
    la: u64,
    len: usize,
    mut f: impl FnMut(u64, core::ops::Range<usize>) -> Option<()>,
) -> Option<()> {
    let read_u64 = |gpa: u64| {
        let mut b = [0u8; 8];
        read_phys(vcpu, gpa, &mut b).map(|()| u64::from_le_bytes(b))
    };
    let mut done = 0;
    while done < len {
        let gpa = pagewalk::translate(paging, la.wrapping_add(done as u64), read_u64)?;
        let n = (4096 - (gpa & 0xfff) as usize).min(len - done);
        f(gpa, done..done + n)?;
        done += n;
    }
    Some(())
}

/// Reads `buf.len()` bytes at guest-linear `la`. Returns how many bytes it
/// could read before unmapped memory.
pub(crate) fn read_linear(vcpu: &Vcpu, paging: &Paging, la: u64, buf: &mut [u8]) -> usize {
    let mut got = 0;
    let _ = for_each_page(vcpu, paging, la, buf.len(), |gpa, range| {
        let end = range.end;
        read_phys(vcpu, gpa, &mut buf[range])?;
        got = end;
        Some(())
    });
    got
}

/// Writes `data` at guest-linear `la`; false if part of it is not
/// writable guest memory (that part and what follows are not written).
pub(crate) fn write_linear(vcpu: &Vcpu, paging: &Paging, la: u64, data: &[u8]) -> bool {
    for_each_page(vcpu, paging, la, data.len(), |gpa, range| {
        let uaddr = user_addr(vcpu, gpa, true)?;
        UserSlice::new(UserPtr::from_addr(uaddr), range.len())
            .writer()
            .write_slice(&data[range])
            .ok()
    })
    .is_some()
}
