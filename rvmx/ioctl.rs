// SPDX-License-Identifier: GPL-2.0

//! Shared pieces of the ioctl handlers: errnos for unmatched commands and
//! copying argument structs in and out.

use kernel::{
    ioctl::{_IOC_NR, _IOC_TYPE},
    prelude::*,
    transmute::{AsBytes, FromBytes},
    uaccess::UserSlice,
};

/// The errno for a command that matched none of `known`: EINVAL when it has
/// the type and number of one of them but another direction or size (a
/// caller built against another header), ENOTTY otherwise.
pub(crate) fn unknown(cmd: u32, known: &[u32]) -> Error {
    let same_slot = |k: &u32| _IOC_TYPE(*k) == _IOC_TYPE(cmd) && _IOC_NR(*k) == _IOC_NR(cmd);
    if known.iter().any(same_slot) {
        EINVAL
    } else {
        ENOTTY
    }
}

/// Copies the ioctl's argument struct in from user space.
pub(crate) fn read_arg<T: FromBytes>(arg: usize) -> Result<T> {
    UserSlice::new(UserPtr::from_addr(arg), size_of::<T>())
        .reader()
        .read()
}

/// Copies `value` out to the ioctl's argument struct in user space.
pub(crate) fn write_arg<T: AsBytes>(arg: usize, value: &T) -> Result {
    UserSlice::new(UserPtr::from_addr(arg), size_of::<T>())
        .writer()
        .write(value)
}
