//! Just enough of KVM (`/dev/kvm`, kvm_intel on the lab's emulated CPU) to
//! run a hostile-suite case program there too, so that what the suite
//! asserts of rvmx is checked against another hypervisor on the same CPU.
//! KVM's structs for registers, segments and the run area's header have
//! the layouts rvmx copied (`uapi/rvmx.h`); only the numbers differ.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use uapi::sys;

use crate::guest::{GuestMem, CODE, DONE_PORT};
use crate::hostile::Ev;
use crate::ktap::{Context, Outcome};
use crate::{ensure, irq::Watchdog};

const KVM_CREATE_VM: u32 = 0xae01;
const KVM_GET_VCPU_MMAP_SIZE: u32 = 0xae04;
const KVM_GET_SUPPORTED_CPUID: u32 = 0xc008_ae05;
const KVM_CREATE_VCPU: u32 = 0xae41;
const KVM_SET_USER_MEMORY_REGION: u32 = 0x4020_ae46;
const KVM_SET_TSS_ADDR: u32 = 0xae47;
const KVM_RUN: u32 = 0xae80;
const KVM_GET_REGS: u32 = 0x8090_ae81;
const KVM_SET_REGS: u32 = 0x4090_ae82;
const KVM_GET_SREGS: u32 = 0x8138_ae83;
const KVM_SET_SREGS: u32 = 0x4138_ae84;
const KVM_SET_CPUID2: u32 = 0x4008_ae90;
const KVM_EXIT_IO: u32 = 2;
/// Without an in-kernel irqchip, KVM reports each CR8 write to user space.
const KVM_EXIT_SET_TPR: u32 = 11;

const MEM: usize = 0x20_0000;

fn kvm<T>(fd: &impl AsRawFd, cmd: u32, arg: *mut T, what: &str) -> Result<i32, Outcome> {
    // SAFETY: each call passes the argument its KVM command encodes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, arg) };
    if r < 0 {
        return Err(Outcome::Fail(format!(
            "{what}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(r)
}

/// `struct kvm_cpuid2` with room for 256 entries.
#[repr(C)]
struct Cpuid {
    nent: u32,
    padding: u32,
    entries: [[u32; 10]; 256],
}

/// Runs `program` at CODE in 64-bit mode with `labguest`'s IDT and
/// `handler` at `handler_at` on KVM; returns its exits as the hostile
/// suite reads them.
pub fn run_cases(program: &[u8], handler: &[u8], handler_at: u64) -> Result<Vec<Ev>, Outcome> {
    let mut mem = GuestMem::new(MEM).ctx("mmap")?;
    mem.write(CODE as usize, program);
    labguest::identity_map(mem.bytes());
    labguest::write_idt(mem.bytes());
    mem.write(handler_at as usize, handler);
    mem.write_u64(labguest::HANDLER_PTR as usize, handler_at);
    mem.write(0x8000, &[1, 0, 0, 0]);

    let dev: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .ctx("/dev/kvm")?;
    let null = std::ptr::null_mut::<u8>();
    // SAFETY: fds the kernel just returned are ours.
    let vm = unsafe { OwnedFd::from_raw_fd(kvm(&dev, KVM_CREATE_VM, null, "KVM_CREATE_VM")?) };
    kvm(
        &vm,
        KVM_SET_TSS_ADDR,
        0xfffb_d000usize as *mut u8,
        "KVM_SET_TSS_ADDR",
    )?;
    let mut region = crate::guest::region(0, 0, MEM as u64, mem.addr(), 0);
    kvm(
        &vm,
        KVM_SET_USER_MEMORY_REGION,
        &mut region,
        "KVM_SET_USER_MEMORY_REGION",
    )?;
    let run_len = kvm(&dev, KVM_GET_VCPU_MMAP_SIZE, null, "KVM_GET_VCPU_MMAP_SIZE")? as usize;
    // SAFETY: as above.
    let vcpu = unsafe { OwnedFd::from_raw_fd(kvm(&vm, KVM_CREATE_VCPU, null, "KVM_CREATE_VCPU")?) };
    let mut cpuid = Box::new(Cpuid {
        nent: 256,
        padding: 0,
        entries: [[0; 10]; 256],
    });
    kvm(
        &dev,
        KVM_GET_SUPPORTED_CPUID,
        &mut *cpuid,
        "KVM_GET_SUPPORTED_CPUID",
    )?;
    kvm(&vcpu, KVM_SET_CPUID2, &mut *cpuid, "KVM_SET_CPUID2")?;
    // SAFETY: all-zero is a valid kvm_sregs/kvm_regs (the rvmx layouts).
    let mut s: sys::rvmx_sregs = unsafe { std::mem::zeroed() };
    kvm(&vcpu, KVM_GET_SREGS, &mut s, "KVM_GET_SREGS")?;
    let mut s = labguest::idt_sregs(labguest::long_mode(s));
    kvm(&vcpu, KVM_SET_SREGS, &mut s, "KVM_SET_SREGS")?;
    // SAFETY: as above.
    let mut r: sys::rvmx_regs = unsafe { std::mem::zeroed() };
    kvm(&vcpu, KVM_GET_REGS, &mut r, "KVM_GET_REGS")?;
    (r.rip, r.rsp, r.rflags) = (CODE, MEM as u64, 2);
    kvm(&vcpu, KVM_SET_REGS, &mut r, "KVM_SET_REGS")?;
    // SAFETY: a shared mapping of the vCPU's run area, checked below.
    let run = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            run_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu.as_raw_fd(),
            0,
        )
    };
    ensure!(run != libc::MAP_FAILED, "mmap of KVM's run area failed");
    let result = (|| {
        let _w = Watchdog::start(Duration::from_secs(60));
        let mut evs = Vec::new();
        loop {
            kvm(&vcpu, KVM_RUN, null, "KVM_RUN")?;
            // SAFETY: the mapping is at least a page; kvm_run's header and
            // its io member have rvmx_run's layout.
            let area = unsafe { &*(run as *const sys::rvmx_run) };
            if area.exit_reason == KVM_EXIT_SET_TPR {
                continue;
            }
            ensure!(
                area.exit_reason == KVM_EXIT_IO,
                "KVM exit {} after {evs:?}",
                area.exit_reason
            );
            // SAFETY: the exit reason says the union holds `io`.
            let io = unsafe { area.__bindgen_anon_1.io };
            ensure!(
                io.direction == 1 && io.count == 1 && io.data_offset < run_len as u64 - 4,
                "KVM I/O exit {io:?}"
            );
            let mut b = [0u8; 4];
            let n = usize::from(io.size).min(4);
            // SAFETY: within the mapping (checked above).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (run as *const u8).add(io.data_offset as usize),
                    b.as_mut_ptr(),
                    n,
                )
            };
            let v = u32::from_le_bytes(b);
            let ev = match io.port {
                0x12 => Ev::Ran(v as u8),
                0x11 => Ev::Vector(v as u8),
                0x13 => Ev::ErrorCode(v),
                p if p == DONE_PORT => Ev::Done,
                p => return Err(Outcome::Fail(format!("KVM: OUT to {p:#x} after {evs:?}"))),
            };
            let done = ev == Ev::Done;
            evs.push(ev);
            if done {
                return Ok(evs);
            }
            ensure!(evs.len() < 1000, "KVM: too many exits");
        }
    })();
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(run, run_len) };
    result
}
