//! Raw ioctl numbers and calls, for the malformed requests the safe
//! `uapi::Rvmx` wrapper cannot express.

use std::io;
use std::os::fd::AsRawFd;

const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` of `<asm-generic/ioctl.h>`.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}

pub const fn io(ty: u32, nr: u32) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

pub const fn ior(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}

pub const fn iow(ty: u32, nr: u32, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// ioctl(fd, cmd, arg) returning the value or the errno.
pub fn raw(fd: &impl AsRawFd, cmd: u32, arg: usize) -> Result<i32, i32> {
    // SAFETY: the tests pass arguments the kernel must validate; the kernel
    // never writes through them into memory we did not give it (that is
    // what the EFAULT tests check with unmapped addresses).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, arg) };
    if ret < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret)
    }
}

pub fn errno_name(e: i32) -> String {
    match e {
        libc::ENOTTY => "ENOTTY".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EAGAIN => "EAGAIN".into(),
        other => format!("errno {other}"),
    }
}
