//! Safe calls on `/dev/rvmx`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::sys;

pub const DEVICE_PATH: &str = "/dev/rvmx";

/// An open `/dev/rvmx`.
#[derive(Debug)]
pub struct Rvmx {
    fd: OwnedFd,
}

impl Rvmx {
    /// Opens the device at `path` (normally [`DEVICE_PATH`]).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let file: File = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self { fd: file.into() })
    }

    /// `RVMX_GET_API_VERSION`.
    pub fn api_version(&self) -> io::Result<u32> {
        // SAFETY: this ioctl takes no argument and returns the version.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), sys::RVMX_GET_API_VERSION as _, 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret as u32)
    }

    /// `RVMX_GET_VMX_CAPS`: capabilities and a fresh probe of every CPU.
    pub fn vmx_caps(&self) -> io::Result<sys::rvmx_vmx_caps> {
        let mut caps = std::mem::MaybeUninit::<sys::rvmx_vmx_caps>::zeroed();
        // SAFETY: the kernel writes exactly one `rvmx_vmx_caps` (its size is
        // encoded in the command) to the valid buffer we pass.
        let ret = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                sys::RVMX_GET_VMX_CAPS as _,
                caps.as_mut_ptr(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zero-initialized, and every bit pattern is a valid
        // `rvmx_vmx_caps` (plain integers).
        Ok(unsafe { caps.assume_init() })
    }
}

impl AsRawFd for Rvmx {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}
