//! VM and vCPU file descriptors of `/dev/rvmx`, with safe calls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use crate::sys;

/// ioctl returning an int, or the OS error.
pub(crate) fn ioctl_with<T>(fd: &impl AsRawFd, cmd: u32, arg: *mut T) -> io::Result<i32> {
    // SAFETY: callers pass an argument of the type the command encodes
    // (or an integer for `_IO` commands); the kernel validates the rest.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, arg) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn ioctl_val(fd: &impl AsRawFd, cmd: u32, arg: usize) -> io::Result<i32> {
    ioctl_with(fd, cmd, arg as *mut u8)
}

/// A VM (`RVMX_CREATE_VM`).
#[derive(Debug)]
pub struct VmFd {
    fd: OwnedFd,
    mmap_size: usize,
}

/// A vCPU (`RVMX_CREATE_VCPU`) with its run area mapped.
#[derive(Debug)]
pub struct VcpuFd {
    fd: OwnedFd,
    run: NonNull<sys::rvmx_run>,
    run_len: usize,
}

// SAFETY: the run area mapping belongs to this object; the kernel
// serializes the vCPU's ioctls, and `run` is only accessed through `&mut`.
unsafe impl Send for VcpuFd {}

/// `struct rvmx_cpuid` with room for the most entries rvmx takes.
#[repr(C)]
struct CpuidBuf {
    nent: u32,
    padding: u32,
    entries: [sys::rvmx_cpuid_entry; sys::RVMX_MAX_CPUID_ENTRIES as usize],
}

impl CpuidBuf {
    fn new(nent: u32) -> Box<Self> {
        // SAFETY: all-zero is a valid `CpuidBuf` (plain integers).
        let mut buf: Box<Self> = Box::new(unsafe { std::mem::zeroed() });
        buf.nent = nent;
        buf
    }
}

/// `struct rvmx_msrs` with room for the most entries rvmx takes.
#[repr(C)]
struct MsrBuf {
    nmsrs: u32,
    pad: u32,
    entries: [sys::rvmx_msr_entry; sys::RVMX_MAX_MSR_ENTRIES as usize],
}

impl MsrBuf {
    fn new(entries: &[sys::rvmx_msr_entry]) -> io::Result<Box<Self>> {
        if entries.len() > sys::RVMX_MAX_MSR_ENTRIES as usize {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        // SAFETY: all-zero is a valid `MsrBuf` (plain integers).
        let mut buf: Box<Self> = Box::new(unsafe { std::mem::zeroed() });
        buf.nmsrs = entries.len() as u32;
        buf.entries[..entries.len()].copy_from_slice(entries);
        Ok(buf)
    }
}

impl crate::Rvmx {
    /// `RVMX_GET_SUPPORTED_CPUID`: the CPUID leaves rvmx can give a guest.
    pub fn supported_cpuid(&self) -> io::Result<Vec<sys::rvmx_cpuid_entry>> {
        let mut buf = CpuidBuf::new(sys::RVMX_MAX_CPUID_ENTRIES);
        ioctl_with(self, sys::RVMX_GET_SUPPORTED_CPUID, &mut *buf)?;
        Ok(buf.entries[..buf.nent as usize].to_vec())
    }

    /// `RVMX_CREATE_VM`.
    pub fn create_vm(&self) -> io::Result<VmFd> {
        let mmap_size = ioctl_val(self, sys::RVMX_GET_VCPU_MMAP_SIZE, 0)? as usize;
        let fd = ioctl_val(self, sys::RVMX_CREATE_VM, 0)?;
        // SAFETY: the kernel just returned this new fd to us.
        Ok(VmFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            mmap_size,
        })
    }
}

impl VmFd {
    /// `RVMX_SET_USER_MEMORY_REGION`.
    ///
    /// # Safety
    ///
    /// `[userspace_addr, +memory_size)` must stay mapped and must not be
    /// used for anything else while the slot exists: the guest reads and
    /// writes it.
    pub unsafe fn set_user_memory_region(
        &self,
        mut region: sys::rvmx_userspace_memory_region,
    ) -> io::Result<()> {
        ioctl_with(self, sys::RVMX_SET_USER_MEMORY_REGION, &mut region).map(drop)
    }

    /// `RVMX_SET_USER_MSR_EXITS`: whether RDMSR/WRMSR of MSRs rvmx does not
    /// virtualize exit to user space (`RVMX_EXIT_X86_RDMSR/WRMSR`) instead
    /// of raising #GP in the guest.
    pub fn set_user_msr_exits(&self, on: bool) -> io::Result<()> {
        let reasons = if on {
            sys::RVMX_MSR_EXIT_REASON_UNKNOWN
        } else {
            0
        };
        ioctl_val(self, sys::RVMX_SET_USER_MSR_EXITS, reasons as usize).map(drop)
    }

    /// `RVMX_SIGNAL_MSI`: delivers the message-signalled interrupt that
    /// a write of `data` to `address` (0xFEExxxxx) would raise on the
    /// system bus. Returns how many local APICs accepted it: 0 when no
    /// vCPU matches the destination, which is not an error (the message
    /// is lost, as on hardware).
    pub fn signal_msi(&self, address: u64, data: u32) -> io::Result<u32> {
        let mut msi = sys::rvmx_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            flags: 0,
            pad: [0; 16],
        };
        let accepted = ioctl_with(self, sys::RVMX_SIGNAL_MSI, &mut msi)?;
        // The ioctl's non-negative result is a count.
        Ok(accepted as u32)
    }

    /// `RVMX_CREATE_VCPU` and the mapping of its run area.
    pub fn create_vcpu(&self, id: u32) -> io::Result<VcpuFd> {
        let fd = ioctl_val(self, sys::RVMX_CREATE_VCPU, id as usize)?;
        // SAFETY: the kernel just returned this new fd to us.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a shared mapping of the vCPU fd at offset 0, of the size
        // the kernel reported; checked for failure below.
        let run = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                self.mmap_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if run == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let run = NonNull::new(run.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(VcpuFd {
            fd,
            run,
            run_len: self.mmap_size,
        })
    }
}

impl VcpuFd {
    /// `RVMX_RUN`: runs until an exit for user space; see `run_area`.
    pub fn run(&mut self) -> io::Result<()> {
        ioctl_val(self, sys::RVMX_RUN, 0).map(drop)
    }

    /// A `_IOR` state ioctl: the struct rvmx fills in.
    fn get<T: sys::Plain>(&self, cmd: u32) -> io::Result<T> {
        // SAFETY: all-zero is a valid value of a `Plain` struct.
        let mut v: T = unsafe { std::mem::zeroed() };
        ioctl_with(self, cmd, &mut v)?;
        Ok(v)
    }

    /// A `_IOW` state ioctl.
    fn set<T: sys::Plain>(&self, cmd: u32, v: &T) -> io::Result<()> {
        let mut v = *v;
        ioctl_with(self, cmd, &mut v).map(drop)
    }

    pub fn regs(&self) -> io::Result<sys::rvmx_regs> {
        self.get(sys::RVMX_GET_REGS)
    }

    pub fn set_regs(&self, regs: &sys::rvmx_regs) -> io::Result<()> {
        self.set(sys::RVMX_SET_REGS, regs)
    }

    pub fn sregs(&self) -> io::Result<sys::rvmx_sregs> {
        self.get(sys::RVMX_GET_SREGS)
    }

    pub fn set_sregs(&self, sregs: &sys::rvmx_sregs) -> io::Result<()> {
        self.set(sys::RVMX_SET_SREGS, sregs)
    }

    /// `RVMX_GET_LAPIC`: the local APIC's registers.
    pub fn lapic(&self) -> io::Result<sys::rvmx_lapic_state> {
        self.get(sys::RVMX_GET_LAPIC)
    }

    pub fn set_lapic(&self, state: &sys::rvmx_lapic_state) -> io::Result<()> {
        self.set(sys::RVMX_SET_LAPIC, state)
    }

    /// `RVMX_GET_VCPU_EVENTS`: pending and interrupted events, shadows.
    pub fn vcpu_events(&self) -> io::Result<sys::rvmx_vcpu_events> {
        self.get(sys::RVMX_GET_VCPU_EVENTS)
    }

    pub fn set_vcpu_events(&self, events: &sys::rvmx_vcpu_events) -> io::Result<()> {
        self.set(sys::RVMX_SET_VCPU_EVENTS, events)
    }

    /// `RVMX_GET_MP_STATE`: `RVMX_MP_STATE_*`.
    pub fn mp_state(&self) -> io::Result<u32> {
        self.get::<sys::rvmx_mp_state>(sys::RVMX_GET_MP_STATE)
            .map(|s| s.mp_state)
    }

    pub fn set_mp_state(&self, mp_state: u32) -> io::Result<()> {
        self.set(sys::RVMX_SET_MP_STATE, &sys::rvmx_mp_state { mp_state })
    }

    /// `RVMX_SET_CPUID`: the table the guest's CPUID reads from.
    pub fn set_cpuid(&self, entries: &[sys::rvmx_cpuid_entry]) -> io::Result<()> {
        if entries.len() > sys::RVMX_MAX_CPUID_ENTRIES as usize {
            return Err(io::Error::from_raw_os_error(libc::E2BIG));
        }
        let mut buf = CpuidBuf::new(entries.len() as u32);
        buf.entries[..entries.len()].copy_from_slice(entries);
        ioctl_with(self, sys::RVMX_SET_CPUID, &mut *buf).map(drop)
    }

    /// `RVMX_GET_MSRS`: fills in `data` of each entry; returns how many
    /// were read (it stops at the first MSR rvmx does not virtualize).
    pub fn get_msrs(&self, entries: &mut [sys::rvmx_msr_entry]) -> io::Result<usize> {
        let mut buf = MsrBuf::new(entries)?;
        let n = ioctl_with(self, sys::RVMX_GET_MSRS, &mut *buf)? as usize;
        entries[..n].copy_from_slice(&buf.entries[..n]);
        Ok(n)
    }

    /// `RVMX_SET_MSRS`: returns how many were written (it stops at the
    /// first MSR or value rvmx refuses).
    pub fn set_msrs(&self, entries: &[sys::rvmx_msr_entry]) -> io::Result<usize> {
        let mut buf = MsrBuf::new(entries)?;
        Ok(ioctl_with(self, sys::RVMX_SET_MSRS, &mut *buf)? as usize)
    }

    /// The run area: the last exit, and fields to fill before the next run.
    pub fn run_area(&mut self) -> &mut sys::rvmx_run {
        // SAFETY: the mapping lives as long as `self` and is at least one
        // `rvmx_run` long; `&mut self` makes this the only Rust reference.
        unsafe { self.run.as_mut() }
    }

    /// After `RVMX_EXIT_IOAPIC_EOI`: the vector the guest ended, whose
    /// I/O APIC pins must drop remote IRR. None after any other exit.
    pub fn eoi_vector(&mut self) -> Option<u8> {
        let run = self.run_area();
        if run.exit_reason != sys::RVMX_EXIT_IOAPIC_EOI {
            return None;
        }
        // SAFETY: the exit reason says the union holds `eoi`.
        Some(unsafe { run.__bindgen_anon_1.eoi.vector })
    }

    /// After `RVMX_EXIT_INTERNAL_ERROR`: the suberror and the valid words of
    /// `data` (at most 16, however large `ndata` claims to be). None after
    /// any other exit.
    pub fn internal_error(&mut self) -> Option<(u32, Vec<u64>)> {
        let run = self.run_area();
        if run.exit_reason != sys::RVMX_EXIT_INTERNAL_ERROR {
            return None;
        }
        // SAFETY: the exit reason says the union holds `internal`.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        Some((internal.suberror, internal.data[..n].to_vec()))
    }

    /// The `len` bytes at `offset` in the run area (PIO data).
    pub fn run_data(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
        let offset = usize::try_from(offset).ok()?;
        if offset.checked_add(len)? > self.run_len {
            return None;
        }
        // SAFETY: bounds checked above against the mapping's length.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.run.as_ptr().cast::<u8>().add(offset), len)
        })
    }
}

impl Drop for VcpuFd {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create_vcpu`.
        unsafe { libc::munmap(self.run.as_ptr().cast(), self.run_len) };
    }
}

impl AsRawFd for VmFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsRawFd for VcpuFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
