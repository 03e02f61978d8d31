//! A small KVM guest through raw `/dev/kvm` ioctls, to run beside rvmx's,
//! and the guest code both run: it fills a page with a pattern, then loops
//! on CPUID, a check that the page still holds the pattern, a counter
//! increment and an OUT that reports the check.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use uapi::sys;

use crate::guest::{GuestMem, TestVm, CODE};
use crate::ktap::{Context, Outcome};

/// Guest memory of a pattern guest, from guest-physical 0.
pub const MEM: usize = 0x1_0000;
/// The counter the guest increments on every round.
pub const COUNTER: usize = 0x2000;
/// The page the guest fills with its pattern (the same guest-physical
/// address in every guest: a translation of another guest's would show).
pub const PATTERN_PAGE: usize = 0x3000;
/// The port of the OUT that ends each round: AL = 0 if the page held the
/// pattern.
pub const REPORT_PORT: u16 = 0x10;

/// Real-mode code at `CODE`; the pattern is in EBP.
#[rustfmt::skip]
pub const PATTERN_CODE: [u8; 42] = [
    0xbf, 0x00, 0x30,             // mov di, 0x3000
    0xb9, 0x00, 0x04,             // mov cx, 0x400
    0x66, 0x89, 0xe8,             // mov eax, ebp
    0xfc,                         // cld
    0xf3, 0x66, 0xab,             // rep stosd
    // round (offset 13):
    0x66, 0x31, 0xc0,             // xor eax, eax
    0x0f, 0xa2,                   // cpuid
    0xbf, 0x00, 0x30,             // mov di, 0x3000
    0xb9, 0x00, 0x04,             // mov cx, 0x400
    0x66, 0x89, 0xe8,             // mov eax, ebp
    0xf3, 0x66, 0xaf,             // repe scasd
    0x0f, 0x95, 0xc0,             // setne al
    0x66, 0xff, 0x06, 0x00, 0x20, // inc dword [0x2000]
    0xe6, REPORT_PORT as u8,      // out 0x10, al
    0xeb, 0xe3,                   // jmp round (13 - 42)
];

/// The host's side of a pattern guest's memory: after `rounds` rounds the
/// counter says so and the page holds only `pattern`.
pub fn check_memory(mem: &mut GuestMem, pattern: u32, rounds: u32) -> Result<(), String> {
    let bytes = mem.bytes();
    let counter = bytes
        .get(COUNTER..COUNTER + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    if counter != rounds {
        return Err(format!(
            "counter {counter} after {rounds} rounds (pattern {pattern:#x})"
        ));
    }
    let page = bytes.get(PATTERN_PAGE..PATTERN_PAGE + 4096).unwrap_or(&[]);
    if let Some((i, w)) = page
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .enumerate()
        .find(|&(_, w)| w != pattern)
    {
        return Err(format!(
            "pattern page word {i} is {w:#x}, want {pattern:#x}"
        ));
    }
    Ok(())
}

/// An rvmx VM running the pattern guest.
pub struct RvmxPattern {
    pub t: TestVm,
    pub pattern: u32,
    pub rounds: u32,
}

impl RvmxPattern {
    pub fn new(pattern: u32) -> Result<Self, Outcome> {
        let t = TestVm::real_mode(MEM, &PATTERN_CODE)?;
        let mut r = t.vcpu.regs().ctx("GET_REGS")?;
        r.rbp = u64::from(pattern);
        t.vcpu.set_regs(&r).ctx("SET_REGS")?;
        Ok(Self {
            t,
            pattern,
            rounds: 0,
        })
    }

    /// Runs one round and checks it from both sides.
    pub fn round(&mut self) -> Result<(), String> {
        self.t.run_expect(sys::RVMX_EXIT_IO).map_err(|e| match e {
            Outcome::Fail(m) | Outcome::Skip(m) => format!("rvmx guest: {m}"),
        })?;
        let io = self.t.io();
        let al = self
            .t
            .vcpu
            .run_data(io.data_offset, 1)
            .and_then(|d| d.first().copied());
        if io.port != REPORT_PORT || al != Some(0) {
            return Err(format!(
                "rvmx guest: OUT to {:#x} with {al:?} in round {}, want {REPORT_PORT:#x} with 0",
                io.port, self.rounds
            ));
        }
        self.rounds += 1;
        check_memory(&mut self.t.mem, self.pattern, self.rounds)
            .map_err(|e| format!("rvmx guest: {e}"))
    }
}

// `<linux/kvm.h>`: `_IO(0xAE, n)`, and `_IOR/_IOW` with the sizes of the
// structs rvmx shares with KVM (memory region 32, regs 144, sregs 312).
const KVM_CREATE_VM: u64 = 0xae01;
const KVM_GET_VCPU_MMAP_SIZE: u64 = 0xae04;
const KVM_CREATE_VCPU: u64 = 0xae41;
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;
const KVM_SET_TSS_ADDR: u64 = 0xae47;
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_SET_REGS: u64 = 0x4090_ae82;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
const KVM_SET_SREGS: u64 = 0x4138_ae84;
const KVM_EXIT_IO: u32 = 2;

const _: () = assert!(size_of::<sys::rvmx_userspace_memory_region>() == 32);
const _: () = assert!(size_of::<sys::rvmx_regs>() == 144);
const _: () = assert!(size_of::<sys::rvmx_sregs>() == 312);

fn ioctl(fd: &OwnedFd, cmd: u64, arg: u64) -> io::Result<i32> {
    // SAFETY: each caller passes the argument its command encodes (a value,
    // or a pointer to a live struct of the encoded size).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as _, arg) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

fn new_fd(fd: i32) -> OwnedFd {
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A KVM VM running the pattern guest in real mode.
pub struct KvmPattern {
    _vm: OwnedFd,
    vcpu: OwnedFd,
    run: *mut u8,
    run_len: usize,
    mem: GuestMem,
    pub pattern: u32,
    pub rounds: u32,
}

// SAFETY: the run area mapping belongs to this struct alone; moving it to
// another thread moves the only user of the pointer.
unsafe impl Send for KvmPattern {}

impl KvmPattern {
    pub fn new(pattern: u32) -> io::Result<Self> {
        let kvm = OpenOptions::new().read(true).write(true).open("/dev/kvm")?;
        let kvm = OwnedFd::from(kvm);
        let vm = new_fd(ioctl(&kvm, KVM_CREATE_VM, 0)?);
        // Intel without unrestricted guest needs it for real mode; harmless
        // otherwise.
        ioctl(&vm, KVM_SET_TSS_ADDR, 0xfffb_d000)?;
        let mut mem = GuestMem::new(MEM)?;
        mem.write(CODE as usize, &PATTERN_CODE);
        let region = sys::rvmx_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: mem.addr(),
        };
        ioctl(&vm, KVM_SET_USER_MEMORY_REGION, &raw const region as u64)?;
        let vcpu = new_fd(ioctl(&vm, KVM_CREATE_VCPU, 0)?);
        let run_len = usize::try_from(ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, 0)?)
            .map_err(|_| io::Error::other("negative mmap size"))?;
        // SAFETY: maps the vCPU's run area, shared, at a place the kernel
        // chooses; unmapped in `Drop`.
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
        if run == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let me = Self {
            _vm: vm,
            vcpu,
            run: run.cast(),
            run_len,
            mem,
            pattern,
            rounds: 0,
        };
        // SAFETY: all-zero is a valid value of these plain structs.
        let mut sregs: sys::rvmx_sregs = unsafe { std::mem::zeroed() };
        ioctl(&me.vcpu, KVM_GET_SREGS, &raw mut sregs as u64)?;
        sregs.cs.selector = 0;
        sregs.cs.base = 0;
        ioctl(&me.vcpu, KVM_SET_SREGS, &raw const sregs as u64)?;
        // SAFETY: as above.
        let mut regs: sys::rvmx_regs = unsafe { std::mem::zeroed() };
        ioctl(&me.vcpu, KVM_GET_REGS, &raw mut regs as u64)?;
        regs.rip = CODE;
        regs.rflags = 2;
        regs.rbp = u64::from(pattern);
        ioctl(&me.vcpu, KVM_SET_REGS, &raw const regs as u64)?;
        Ok(me)
    }

    fn run_u32(&self, offset: usize) -> u32 {
        if offset + 4 > self.run_len {
            return 0;
        }
        // SAFETY: within the mapping (checked above); KVM's run area is
        // page-aligned and the offsets used are 4-byte aligned.
        unsafe { self.run.add(offset).cast::<u32>().read_volatile() }
    }

    /// Runs one round and checks it from both sides.
    pub fn round(&mut self) -> Result<(), String> {
        ioctl(&self.vcpu, KVM_RUN, 0).map_err(|e| format!("KVM_RUN: {e}"))?;
        // struct kvm_run: exit_reason at 8; io at 32: direction, size,
        // port (u16), count (u32), data_offset (u64).
        let reason = self.run_u32(8);
        if reason != KVM_EXIT_IO {
            return Err(format!(
                "KVM guest: exit {reason} in round {}, want KVM_EXIT_IO",
                self.rounds
            ));
        }
        let port = (self.run_u32(32) >> 16) as u16;
        let data_offset = self.run_u32(40) as usize;
        let al = (data_offset < self.run_len).then(|| {
            // SAFETY: within the mapping (checked).
            unsafe { self.run.add(data_offset).read_volatile() }
        });
        if port != REPORT_PORT || al != Some(0) {
            return Err(format!(
                "KVM guest: OUT to {port:#x} with {al:?} in round {}, want {REPORT_PORT:#x} with 0",
                self.rounds
            ));
        }
        self.rounds += 1;
        check_memory(&mut self.mem, self.pattern, self.rounds)
            .map_err(|e| format!("KVM guest: {e}"))
    }
}

impl Drop for KvmPattern {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, used by nothing after this.
        unsafe { libc::munmap(self.run.cast(), self.run_len) };
    }
}
