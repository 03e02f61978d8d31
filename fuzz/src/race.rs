//! Several threads and processes at once: a vCPU thread runs its guest
//! while the main thread deletes and re-adds the slots under it, unmaps
//! the backing memory, closes the VM, device and vCPU fds, floods it with
//! MSIs, changes its state, and forks children that try the inherited
//! fds; and children that exit (or are killed) in the middle of a RUN.
//! The order of events depends on the scheduler, so only the sequence of
//! actions, not their timing, replays from the seed.

use std::os::fd::RawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use uapi::sys;

use crate::rng::Rng;
use crate::stats::{self, problem};
use crate::sys::{ioctl, raw_ioctl, Map, ThreadTimer};
use crate::world::{check_exit, open_dev, Scratch, Where};

const MEM: usize = 0x20_0000;

/// Guests the vCPU thread runs: a real-mode spin; a 64-bit loop of OUT,
/// MMIO and reads from the second slot; a 64-bit loop that halts with
/// interrupts on.
fn guest_code(kind: u64) -> &'static [u8] {
    match kind {
        0 => &[0xeb, 0xfe],
        1 => &[
            0xe6, 0x80, // out 0x80, al
            0x8b, 0x04, 0x25, 0, 0, 0, 0x40, // mov eax, [0x40000000]
            0x8b, 0x04, 0x25, 0, 0, 0x20, 0, // mov eax, [0x200000] (slot 1)
            0x89, 0x04, 0x25, 0, 0x10, 0x20, 0, // mov [0x201000], eax
            0xeb, 0xe2, // jmp to the start
        ],
        _ => &[0xfb, 0xf4, 0xeb, 0xfc], // sti; hlt; jmp back
    }
}

fn region(slot: u32, gpa: u64, size: u64, uaddr: usize) -> sys::rvmx_userspace_memory_region {
    sys::rvmx_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: uaddr as u64,
    }
}

/// A VM with guest memory at 0 (slot 0) and 0x200000 (slot 1), code of
/// `kind` and vCPU 0 ready to run it.
struct RaceVm {
    dev: RawFd,
    vm: RawFd,
    vcpu: RawFd,
    run: usize,
    mem: Map,
    mem1: Map,
}

impl RaceVm {
    fn new(kind: u64, scratch: &mut Scratch) -> Option<Self> {
        let dev = open_dev()?;
        let vm = ioctl("CREATE_VM", dev, sys::RVMX_CREATE_VM, 0).ok()?;
        let mut mem = Map::new(MEM, libc::PROT_READ | libc::PROT_WRITE)?;
        let mem1 = Map::new(0x10000, libc::PROT_READ | libc::PROT_WRITE)?;
        let b = mem.bytes()?;
        labguest::identity_map(b);
        let code = guest_code(kind);
        b[0x1000..0x1000 + code.len()].copy_from_slice(code);
        for r in [
            region(0, 0, MEM as u64, mem.ptr),
            region(1, MEM as u64, 0x10000, mem1.ptr),
        ] {
            let a = scratch.write(&r);
            ioctl(
                "SET_USER_MEMORY_REGION",
                vm,
                sys::RVMX_SET_USER_MEMORY_REGION,
                a,
            )
            .ok()?;
        }
        let vcpu = ioctl("CREATE_VCPU", vm, sys::RVMX_CREATE_VCPU, 0).ok()?;
        // SAFETY: a shared mapping of the vCPU fd at offset 0.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let me = Self {
            dev,
            vm,
            vcpu,
            run: p as usize,
            mem,
            mem1,
        };
        let a = scratch.addr();
        ioctl("GET_SREGS", vcpu, sys::RVMX_GET_SREGS, a).ok()?;
        let s: sys::rvmx_sregs = scratch.read();
        let s = if kind == 0 {
            let mut s = s;
            (s.cs.selector, s.cs.base) = (0, 0);
            s
        } else {
            labguest::long_mode(s)
        };
        let a = scratch.write(&s);
        ioctl("SET_SREGS", vcpu, sys::RVMX_SET_SREGS, a).ok()?;
        // SAFETY: all-zero is a valid rvmx_regs.
        let mut r: sys::rvmx_regs = unsafe { std::mem::zeroed() };
        (r.rip, r.rsp, r.rflags) = (0x1000, MEM as u64, 2);
        let a = scratch.write(&r);
        ioctl("SET_REGS", vcpu, sys::RVMX_SET_REGS, a).ok()?;
        if kind == 2 {
            // The x2APIC is off: MSIs to an xAPIC that SVR left disabled are
            // dropped, so enable it through the saved state.
            let a = scratch.addr();
            if ioctl("GET_LAPIC", vcpu, sys::RVMX_GET_LAPIC, a).is_ok() {
                scratch.buf()[0xf0..0xf4].copy_from_slice(&0x1ffu32.to_le_bytes());
                let _ = ioctl("SET_LAPIC", vcpu, sys::RVMX_SET_LAPIC, a);
            }
        }
        Some(me)
    }
}

impl Drop for RaceVm {
    fn drop(&mut self) {
        // SAFETY: the run-area mapping made in `new`.
        unsafe { libc::munmap(self.run as *mut _, 4096) };
        for fd in [self.vcpu, self.vm, self.dev] {
            if fd >= 0 {
                crate::sys::close(fd);
            }
        }
    }
}

/// The vCPU thread: RUN until told to stop (each RUN ends within 5 ms by
/// its timer), answering exits.
fn runner(
    fd: RawFd,
    run: usize,
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicU64>,
    mut rng: Rng,
    tag: String,
) {
    crate::sys::catch_sigusr1();
    let Some(timer) = ThreadTimer::new() else {
        return;
    };
    let at = Where { seed: 0, op: 0 };
    while !stop.load(Ordering::SeqCst) {
        let r = crate::sys::run(fd, &timer, Duration::from_millis(5));
        runs.fetch_add(1, Ordering::SeqCst);
        match r {
            // ENOTTY: the fd now names /dev/null (closed under us).
            Err(libc::ENOTTY) | Err(libc::EBADF) => break,
            Err(libc::EINTR) | Err(libc::EBUSY) => {}
            Err(e) => {
                problem(format!("{tag}: RUN in the race: {}", stats::errno_name(e)));
                break;
            }
            Ok(_) => {
                // SAFETY: the run area stays mapped until this thread is
                // joined.
                if !unsafe { check_exit(&at, run as *mut sys::rvmx_run, r, &mut rng) } {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

/// A forked child tries the inherited fds: every VM and vCPU ioctl must
/// fail with EIO (or EBADF if already closed). It uses only system calls.
fn fork_probe(vm: RawFd, vcpu: RawFd) {
    // SAFETY: the child only makes system calls and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut buf = [0u64; 64];
        let ok = |r: Result<i32, i32>| {
            matches!(r, Err(libc::EIO) | Err(libc::EBADF) | Err(libc::ENOTTY))
        };
        let a = raw_ioctl(vm, sys::RVMX_SET_USER_MSR_EXITS, 0);
        let b = raw_ioctl(vcpu, sys::RVMX_GET_REGS, buf.as_mut_ptr() as usize);
        let c = raw_ioctl(vcpu, sys::RVMX_RUN, 0);
        let d = raw_ioctl(vm, sys::RVMX_CREATE_VCPU, 3);
        let code = if ok(a) && ok(b) && ok(c) && ok(d) {
            0
        } else {
            1
        };
        // SAFETY: ends the child without running the parent's atexit work.
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        return;
    }
    let status = wait_child(pid, Duration::from_secs(30));
    stats::event("fork child", format!("{status:?}"));
    if status != Some(0) {
        problem(format!("a forked child's ioctls on inherited rvmx fds: status {status:?}, want EIO everywhere (exit 0)"));
    }
}

/// The child's exit code, or 128 + signal; None if it did not end in time.
fn wait_child(pid: i32, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let mut st = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128 + libc::WTERMSIG(st)
            });
        }
        if r < 0 || Instant::now() > deadline {
            if r >= 0 {
                // SAFETY: our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One race: the vCPU runs while this thread does 3-10 disruptive things.
pub fn race(rng: &mut Rng, at: &Where, scratch: &mut Scratch) {
    let kind = rng.below(3);
    let Some(mut vm) = RaceVm::new(kind, scratch) else {
        problem(format!("{}: could not set up a race VM", at.tag()));
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let (fd, run) = (vm.vcpu, vm.run);
    let (s, n, r2, tag) = (stop.clone(), runs.clone(), rng.fork(), at.tag());
    let t = std::thread::spawn(move || runner(fd, run, s, n, r2, tag));
    let mut actions = Vec::new();
    for _ in 0..3 + rng.below(8) {
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        let a = rng.below(12);
        actions.push(a);
        match a {
            0 => {
                let r = region(0, 0, 0, 0);
                let p = scratch.write(&r);
                let _ = ioctl(
                    "race: delete slot 0",
                    vm.vm,
                    sys::RVMX_SET_USER_MEMORY_REGION,
                    p,
                );
            }
            1 if vm.mem.is_mapped() => {
                let r = region(0, 0, MEM as u64, vm.mem.ptr);
                let p = scratch.write(&r);
                let _ = ioctl(
                    "race: re-add slot 0",
                    vm.vm,
                    sys::RVMX_SET_USER_MEMORY_REGION,
                    p,
                );
            }
            2 => {
                let r = if rng.one_in(2) {
                    region(1, MEM as u64, 0, 0)
                } else {
                    region(1, MEM as u64, 0x10000, vm.mem1.ptr)
                };
                let p = scratch.write(&r);
                let _ = ioctl(
                    "race: slot 1 churn",
                    vm.vm,
                    sys::RVMX_SET_USER_MEMORY_REGION,
                    p,
                );
            }
            3 => vm.mem.unmap(),
            4 => vm.mem1.unmap(),
            5 if vm.vm >= 0 => {
                crate::sys::close(vm.vm);
                vm.vm = -1;
            }
            6 if vm.dev >= 0 => {
                crate::sys::close(vm.dev);
                vm.dev = -1;
            }
            7 => {
                for i in 0..50 {
                    let msi = sys::rvmx_msi {
                        address_lo: 0xfee0_0000,
                        address_hi: 0,
                        data: 0x40 + (i % 16),
                        flags: 0,
                        pad: [0; 16],
                    };
                    let p = scratch.write(&msi);
                    let r = ioctl("race: MSI storm", vm.vm, sys::RVMX_SIGNAL_MSI, p);
                    if r.is_err() {
                        break;
                    }
                }
            }
            8 => fork_probe(vm.vm, vm.vcpu),
            9 => {
                let p = scratch.addr();
                let r = ioctl("race: GET_REGS under RUN", vm.vcpu, sys::RVMX_GET_REGS, p);
                if let Err(e) = r {
                    if ![libc::ENOTTY, libc::EINTR, libc::EBUSY, libc::EAGAIN].contains(&e) {
                        problem(format!(
                            "{}: GET_REGS while another thread runs the vCPU: {}",
                            at.tag(),
                            stats::errno_name(e)
                        ));
                    }
                }
            }
            10 => {
                let p = scratch.addr();
                if ioctl("race: GET_SREGS", vm.vcpu, sys::RVMX_GET_SREGS, p).is_ok() {
                    let mut s: sys::rvmx_sregs = scratch.read();
                    crate::guest::mutate_sregs(rng, &mut s);
                    let p = scratch.write(&s);
                    let _ = ioctl("race: SET_SREGS under RUN", vm.vcpu, sys::RVMX_SET_SREGS, p);
                }
            }
            _ => {
                // Close the vCPU fd under RUN: /dev/null takes its number
                // (so no other file can), the RUN in progress keeps the file.
                // SAFETY: plain system calls on fds we own.
                unsafe {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                    if null >= 0 {
                        libc::dup2(null, vm.vcpu);
                        libc::close(null);
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    if t.join().is_err() {
        problem(format!("{}: the vCPU thread panicked", at.tag()));
    }
    stats::event("race episodes", format!("guest {kind}"));
    stats::event("race actions", format!("{}", actions.len()));
    let _ = runs.load(Ordering::SeqCst);
}

/// A child process (this binary with `--child-exit`) that ends while its
/// vCPU thread is inside RUN.
pub fn child_exit(rng: &mut Rng, at: &Where) {
    let seed = rng.next();
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let child = Command::new(exe)
        .args(["--child-exit", &seed.to_string()])
        .spawn();
    let Ok(child) = child else {
        problem(format!("{}: could not start the exit child", at.tag()));
        return;
    };
    let status = wait_child(child.id() as i32, Duration::from_secs(30));
    stats::event("exit child", format!("{status:?}"));
    match status {
        Some(0) | Some(137) => {}
        other => problem(format!(
            "{}: exit child (seed {seed}) ended with {other:?}, want 0 or SIGKILL",
            at.tag()
        )),
    }
}

/// The child's side: a vCPU thread in RUN, and this thread ends the
/// process one way or another a moment later.
pub fn child_exit_main(seed: u64) -> ! {
    let mut rng = Rng::new(seed);
    let mut scratch = Scratch::new();
    let kind = rng.below(3);
    let Some(mut vm) = RaceVm::new(kind, &mut scratch) else {
        // SAFETY: ends the process.
        unsafe { libc::_exit(4) }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU64::new(0));
    let (fd, run) = (vm.vcpu, vm.run);
    let (s, n, r2) = (stop.clone(), runs, rng.fork());
    std::thread::spawn(move || runner(fd, run, s, n, r2, "exit child".into()));
    std::thread::sleep(Duration::from_micros(rng.below(10_000)));
    match rng.below(4) {
        0 => {}
        1 => vm.mem.unmap(),
        2 => {
            let r = region(0, 0, 0, 0);
            let p = scratch.write(&r);
            let _ = raw_ioctl(vm.vm, sys::RVMX_SET_USER_MEMORY_REGION, p);
        }
        _ => {
            // SAFETY: kills this process, as the OOM killer might.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
    std::mem::forget(vm);
    // SAFETY: exit_group with the vCPU thread still in RUN.
    unsafe { libc::_exit(0) }
}
