//! The two hypervisors behind one set of calls: the ioctl numbers differ,
//! the structs do not.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use uapi::sys;

#[derive(Clone, Copy, Debug)]
pub enum Hypervisor {
    Rvmx,
    Kvm,
}

struct Numbers {
    device: &'static str,
    mmap_size: u32,
    create_vm: u32,
    set_memory: u32,
    create_vcpu: u32,
    run: u32,
    get_regs: u32,
    set_regs: u32,
    get_sregs: u32,
    set_sregs: u32,
}

const RVMX: Numbers = Numbers {
    device: "/dev/rvmx",
    mmap_size: sys::RVMX_GET_VCPU_MMAP_SIZE,
    create_vm: sys::RVMX_CREATE_VM,
    set_memory: sys::RVMX_SET_USER_MEMORY_REGION,
    create_vcpu: sys::RVMX_CREATE_VCPU,
    run: sys::RVMX_RUN,
    get_regs: sys::RVMX_GET_REGS,
    set_regs: sys::RVMX_SET_REGS,
    get_sregs: sys::RVMX_GET_SREGS,
    set_sregs: sys::RVMX_SET_SREGS,
};

/// `<linux/kvm.h>`: `_IO(0xAE, n)`, and `_IOR/_IOW` with the sizes of the
/// structs rvmx shares (memory region 32, regs 144, sregs 312 bytes).
const KVM: Numbers = Numbers {
    device: "/dev/kvm",
    mmap_size: 0xae04,
    create_vm: 0xae01,
    set_memory: 0x4020_ae46,
    create_vcpu: 0xae41,
    run: 0xae80,
    get_regs: 0x8090_ae81,
    set_regs: 0x4090_ae82,
    get_sregs: 0x8138_ae83,
    set_sregs: 0x4138_ae84,
};
const KVM_SET_TSS_ADDR: u32 = 0xae47;
/// `_IOWR(0xAE, 0x05, struct kvm_cpuid2)` on /dev/kvm and
/// `_IOW(0xAE, 0x90, struct kvm_cpuid2)` on the vCPU: without a CPUID table
/// KVM refuses EFER.LME (long mode is not "supported" by the guest).
const KVM_GET_SUPPORTED_CPUID: u32 = 0xc008_ae05;
const KVM_SET_CPUID2: u32 = 0x4008_ae90;
/// `struct kvm_cpuid2` with room for 256 `kvm_cpuid_entry2` (40 bytes).
#[repr(C)]
struct KvmCpuid {
    nent: u32,
    padding: u32,
    entries: [[u32; 10]; 256],
}

const _: () = assert!(size_of::<sys::rvmx_userspace_memory_region>() == 32);
const _: () = assert!(size_of::<sys::rvmx_regs>() == 144);
const _: () = assert!(size_of::<sys::rvmx_sregs>() == 312);

fn ioctl<T>(fd: &impl AsRawFd, cmd: u32, arg: *mut T) -> Result<i32, String> {
    // SAFETY: each call passes the argument type its command encodes.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, arg) };
    if ret < 0 {
        return Err(format!(
            "ioctl {cmd:#x}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(ret)
}

/// `_IO(0xAE, 0x60)`: KVM's in-kernel irqchip (PIC, I/O APIC and a local
/// APIC per vCPU), made before the vCPUs. rvmx's local APICs are always in
/// the kernel.
const KVM_CREATE_IRQCHIP: u32 = 0xae60;
/// CPUID.1:ECX bits KVM needs in the guest's table before it lets the
/// guest use x2APIC mode and the TSC-deadline timer mode.
const CPUID1_ECX_X2APIC: u32 = 1 << 21;
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// A VM on either hypervisor, with its memory in one slot at
/// guest-physical 0.
pub struct Vm {
    hv: Hypervisor,
    nums: &'static Numbers,
    dev: std::fs::File,
    vm: OwnedFd,
}

/// One vCPU and its run area. `Send`: a vCPU thread may own it.
pub struct Vcpu {
    nums: &'static Numbers,
    fd: OwnedFd,
    run: *mut sys::rvmx_run,
    run_len: usize,
}

// SAFETY: the run area is a shared mapping owned by this value alone; the
// fd and the mapping may be used from any thread.
unsafe impl Send for Vcpu {}

impl Vm {
    /// A VM with `len` bytes at `mem` as its memory. `irqchip`: on KVM,
    /// create the in-kernel irqchip, so that the vCPUs have local APICs
    /// (rvmx always has them).
    ///
    /// # Safety
    ///
    /// `mem` must point to `len` bytes that outlive the VM.
    pub unsafe fn new(
        hv: Hypervisor,
        mem: *mut u8,
        len: usize,
        irqchip: bool,
    ) -> Result<Self, String> {
        let nums = match hv {
            Hypervisor::Rvmx => &RVMX,
            Hypervisor::Kvm => &KVM,
        };
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(nums.device)
            .map_err(|e| format!("{}: {e}", nums.device))?;
        // SAFETY: fds returned by the kernel are ours.
        let vm = unsafe {
            OwnedFd::from_raw_fd(ioctl(&dev, nums.create_vm, std::ptr::null_mut::<u8>())?)
        };
        if let Hypervisor::Kvm = hv {
            ioctl(&vm, KVM_SET_TSS_ADDR, 0xfffb_d000usize as *mut u8)?;
            if irqchip {
                ioctl(&vm, KVM_CREATE_IRQCHIP, std::ptr::null_mut::<u8>())
                    .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
            }
        }
        let mut region = sys::rvmx_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: len as u64,
            userspace_addr: mem as u64,
        };
        ioctl(&vm, nums.set_memory, &mut region)?;
        Ok(Self { hv, nums, dev, vm })
    }

    /// Creates vCPU `id` (0 is the bootstrap processor; the others wait
    /// for INIT and SIPI where the local APIC is in the kernel).
    pub fn vcpu(&self, id: u32) -> Result<Vcpu, String> {
        let nums = self.nums;
        let run_len = ioctl(&self.dev, nums.mmap_size, std::ptr::null_mut::<u8>())? as usize;
        // SAFETY: fds returned by the kernel are ours.
        let fd = unsafe {
            OwnedFd::from_raw_fd(ioctl(&self.vm, nums.create_vcpu, id as usize as *mut u8)?)
        };
        if let Hypervisor::Kvm = self.hv {
            let mut cpuid = Box::new(KvmCpuid {
                nent: 256,
                padding: 0,
                entries: [[0; 10]; 256],
            });
            ioctl(&self.dev, KVM_GET_SUPPORTED_CPUID, &mut *cpuid)?;
            // entry: function, index, flags, eax, ebx, ecx, edx, padding.
            for e in cpuid.entries.iter_mut().take(cpuid.nent as usize) {
                if e[0] == 1 {
                    e[5] |= CPUID1_ECX_X2APIC | CPUID1_ECX_TSC_DEADLINE;
                }
            }
            ioctl(&fd, KVM_SET_CPUID2, &mut *cpuid)?;
        }
        // SAFETY: shared mapping of the vCPU's run area; checked below.
        let run = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                run_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if run == libc::MAP_FAILED {
            return Err(format!(
                "mmap of the run area: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Vcpu {
            nums,
            fd,
            run: run.cast(),
            run_len,
        })
    }
}

impl Vcpu {
    pub fn sregs(&self) -> Result<sys::rvmx_sregs, String> {
        // SAFETY: all-zero is a valid `rvmx_sregs`.
        let mut s: sys::rvmx_sregs = unsafe { std::mem::zeroed() };
        ioctl(&self.fd, self.nums.get_sregs, &mut s)?;
        Ok(s)
    }

    pub fn set_sregs(&self, mut s: sys::rvmx_sregs) -> Result<(), String> {
        ioctl(&self.fd, self.nums.set_sregs, &mut s).map(drop)
    }

    pub fn regs(&self) -> Result<sys::rvmx_regs, String> {
        // SAFETY: all-zero is a valid `rvmx_regs`.
        let mut r: sys::rvmx_regs = unsafe { std::mem::zeroed() };
        ioctl(&self.fd, self.nums.get_regs, &mut r)?;
        Ok(r)
    }

    pub fn set_regs(&self, mut r: sys::rvmx_regs) -> Result<(), String> {
        ioctl(&self.fd, self.nums.set_regs, &mut r).map(drop)
    }

    /// Runs to the next exit for user space and returns the run area.
    /// KVM_RUN of an application processor that is waiting for SIPI
    /// returns EAGAIN once INIT (or SIPI) arrived: run it again, as QEMU
    /// does (rvmx's RUN sleeps through INIT until the SIPI).
    pub fn run(&mut self) -> Result<&mut sys::rvmx_run, String> {
        loop {
            // SAFETY: KVM_RUN / RVMX_RUN take no argument.
            let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), self.nums.run as _, 0usize) };
            if ret >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(format!("ioctl {:#x}: {e}", self.nums.run));
            }
        }
        // SAFETY: the mapping is live and at least one `rvmx_run` long.
        Ok(unsafe { &mut *self.run })
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Vm::vcpu`.
        unsafe { libc::munmap(self.run.cast(), self.run_len) };
    }
}
