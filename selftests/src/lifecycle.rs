//! Life cycle under load (issue 8): VMs created and destroyed by the
//! hundred with no memory left behind, rmmod refused while any fd or
//! mapping of rvmx lives, and many VMs running at once on every CPU.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labguest::host::{meminfo_kib, module_refcnt, wait_refcnt_zero, Kmsg};
use labguest::{code, guest};
use uapi::{sys, Rvmx, DEVICE_PATH};

use crate::guest::{TestVm, CODE};
use crate::irq::{online_cpus, Watchdog};
use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::vm::{catch_sigusr1, set_cpu};
use crate::{ensure, kmod, Ctx};

pub const TESTS: &[Test] = &[
    Test {
        name: "vm_churn_100x2_no_memory_growth",
        run: vm_churn_100x2_no_memory_growth,
    },
    Test {
        name: "rmmod_refused_while_any_fd_or_mapping_lives",
        run: rmmod_refused_while_any_fd_or_mapping_lives,
    },
    Test {
        name: "many_vms_running_on_all_cpus",
        run: many_vms_running_on_all_cpus,
    },
];

/// 64-bit guest: OUT 0x10 then DONE.
const OUT_DONE: [u8; 4] = [0xe6, 0x10, 0xe6, 0xf4];

/// One VM of the churn: 1 MiB of memory, two vCPUs with their run areas,
/// vCPU 0 run to its DONE (so its VMCS was loaded and cleared), all closed.
fn one_vm() -> TestResult {
    let mut t = TestVm::long_mode(0x10_0000, &OUT_DONE)?;
    let _ap = t.vm.create_vcpu(1).ctx("RVMX_CREATE_VCPU 1")?;
    t.run_expect(sys::RVMX_EXIT_IO)?;
    t.run_to_done()
}

/// Slab and available memory, in KiB.
#[derive(Clone, Copy, Debug)]
struct Mem {
    slab: u64,
    available: u64,
}

fn mem_now() -> Result<Mem, Outcome> {
    // Give RCU-freed objects a moment, and the kernel's vmstat work (once
    // a second) the chance to fold the per-CPU counters into the global
    // ones /proc/meminfo shows (what it has not folded is bounded by the
    // per-CPU threshold: 20 pages per CPU for this lab's 1 GiB).
    std::thread::sleep(Duration::from_millis(1100));
    Ok(Mem {
        slab: meminfo_kib("Slab")
            .ok_or_else(|| Outcome::Fail("no Slab in /proc/meminfo".into()))?,
        available: meminfo_kib("MemAvailable")
            .ok_or_else(|| Outcome::Fail("no MemAvailable in /proc/meminfo".into()))?,
    })
}

/// Slab growth allowed over 100 VMs: a leak of one 4 KiB page or one
/// small object per VM (a VMCS, an EPT table, a vCPU) shows well above it.
const SLAB_BOUND_KIB: u64 = 256;
/// MemAvailable drop allowed: one page per VM leaked would be 400 KiB.
const AVAILABLE_BOUND_KIB: u64 = 512;

fn vm_churn_100x2_no_memory_growth(_: &Ctx) -> TestResult {
    let mut kmsg = Kmsg::open().ctx("open /dev/kmsg")?;
    // Warm up the slab caches and page lists the first VMs fill.
    for _ in 0..10 {
        one_vm()?;
    }
    let before = mem_now()?;
    let refs_before = module_refcnt("rvmx");
    let started = Instant::now();
    for i in 0..100 {
        one_vm().map_err(|e| match e {
            Outcome::Fail(m) => Outcome::Fail(format!("VM {i}: {m}")),
            s => s,
        })?;
    }
    let took = started.elapsed();
    let after = mem_now()?;
    println!(
        "# vm_churn_100x2_no_memory_growth: 100 VMs x 2 vCPUs in {took:.1?}; Slab {} -> {} KiB, \
         MemAvailable {} -> {} KiB",
        before.slab, after.slab, before.available, after.available
    );
    ensure!(
        after.slab <= before.slab + SLAB_BOUND_KIB,
        "Slab grew by {} KiB over 100 VMs (bound {SLAB_BOUND_KIB})",
        after.slab - before.slab
    );
    ensure!(
        after.available + AVAILABLE_BOUND_KIB >= before.available,
        "MemAvailable fell by {} KiB over 100 VMs (bound {AVAILABLE_BOUND_KIB})",
        before.available - after.available
    );
    let refs = module_refcnt("rvmx");
    ensure!(
        refs == refs_before,
        "rvmx refcount {refs:?} after the churn, {refs_before:?} before"
    );
    let reports = kmsg.reports();
    ensure!(
        reports.is_empty(),
        "the kernel logged:\n{}",
        reports.join("\n")
    );
    Ok(())
}

/// rmmod must fail with EWOULDBLOCK now (and the refcount be non-zero).
fn expect_in_use(ctx: &Ctx, what: &str) -> TestResult {
    let refs = module_refcnt("rvmx");
    ensure!(
        refs.is_some_and(|n| n > 0),
        "{what}: rvmx refcount {refs:?}, want > 0"
    );
    match kmod::rmmod("rvmx") {
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(()),
        Err(e) => Err(Outcome::Fail(format!(
            "rmmod with {what}: {e}, want EWOULDBLOCK"
        ))),
        Ok(()) => {
            let _ = kmod::insmod(&ctx.module);
            Err(Outcome::Fail(format!("rmmod succeeded with {what}")))
        }
    }
}

fn rmmod_refused_while_any_fd_or_mapping_lives(ctx: &Ctx) -> TestResult {
    ensure!(
        wait_refcnt_zero("rvmx", Duration::from_secs(5)) == Some(0),
        "rvmx refcount {:?} before the test",
        module_refcnt("rvmx")
    );
    // Only a VM fd.
    let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
    let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
    drop(rvmx);
    expect_in_use(ctx, "only a VM fd open")?;
    // Only a vCPU's run area mapped: its fd closed, the VM's too.
    let mut vcpu = vm.create_vcpu(0).ctx("RVMX_CREATE_VCPU")?;
    drop(vm);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&vcpu);
    let dup = {
        // Keep the mapping, close the fd: dup it away and close both
        // numbers (VcpuFd's drop would unmap).
        // SAFETY: dup of an fd we own.
        unsafe { libc::dup(fd) }
    };
    ensure!(dup >= 0, "dup failed");
    let run = vcpu.run_area() as *mut sys::rvmx_run;
    std::mem::forget(vcpu);
    // SAFETY: both are our fds; the mapping at `run` stays.
    unsafe {
        libc::close(fd);
        libc::close(dup);
    }
    expect_in_use(ctx, "only a run-area mapping left")?;
    // SAFETY: the run-area mapping created by create_vcpu (one page).
    unsafe { libc::munmap(run.cast(), 4096) };
    ensure!(
        wait_refcnt_zero("rvmx", Duration::from_secs(5)) == Some(0),
        "rvmx refcount {:?} with every fd and mapping gone",
        module_refcnt("rvmx")
    );
    kmod::rmmod("rvmx").ctx("rmmod with nothing open")?;
    ensure!(
        kmod::wait_for(Path::new(DEVICE_PATH), false),
        "{DEVICE_PATH} still there after rmmod"
    );
    kmod::insmod(&ctx.module).ctx("insmod")?;
    ensure!(
        kmod::wait_for(Path::new(DEVICE_PATH), true),
        "{DEVICE_PATH} missing after insmod"
    );
    Ok(())
}

// Counts in R12 and reports every 2^16 iterations (OUT 0x10 of R12).
guest!(
    G_COUNT,
    "xor r12d, r12d",
    "G_COUNT_l:",
    "inc r12",
    "test r12d, 0xffff",
    "jnz G_COUNT_l",
    "mov eax, r12d",
    "out 0x10, eax",
    "jmp G_COUNT_l",
);

fn many_vms_running_on_all_cpus(_: &Ctx) -> TestResult {
    catch_sigusr1();
    let mut kmsg = Kmsg::open().ctx("open /dev/kmsg")?;
    let cpus = online_cpus();
    let n = 2 * cpus;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..n {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || -> Result<u32, String> {
            let _ = set_cpu(i % cpus);
            let why = |o: Outcome| match o {
                Outcome::Fail(m) | Outcome::Skip(m) => m,
            };
            let mut t = TestVm::long_mode(0x20_0000, code!(G_COUNT)).map_err(why)?;
            let _w = Watchdog::start(Duration::from_secs(120));
            let mut reports = 0;
            let mut last = 0;
            while reports < 10 || !stop.load(Ordering::SeqCst) {
                let reason = t.run().map_err(why)?;
                if reason != sys::RVMX_EXIT_IO {
                    return Err(t.describe_exit(reason));
                }
                let io = t.io();
                let d = t.vcpu.run_data(io.data_offset, 4).ok_or("no data")?;
                let v = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
                if io.port != 0x10 || v != last + 0x1_0000 {
                    return Err(format!(
                        "VM {i}: OUT {v:#x} to {:#x} after {last:#x}",
                        io.port
                    ));
                }
                last = v;
                reports += 1;
            }
            let rip = t.vcpu.regs().map_err(|e| e.to_string())?.rip;
            if !(CODE..CODE + code!(G_COUNT).len() as u64).contains(&rip) {
                return Err(format!("VM {i}: RIP {rip:#x} outside its loop"));
            }
            Ok(reports)
        }));
    }
    // Let them all run together for a while, then stop.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let mut bad = Vec::new();
    for (i, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(r)) if r >= 10 => {}
            Ok(Ok(r)) => bad.push(format!("VM {i}: {r} reports")),
            Ok(Err(e)) => bad.push(e),
            Err(_) => bad.push(format!("VM {i}: thread panicked")),
        }
    }
    ensure!(
        bad.is_empty(),
        "{n} VMs on {cpus} CPUs:\n{}",
        bad.join("\n")
    );
    let reports = kmsg.reports();
    ensure!(
        reports.is_empty(),
        "the kernel logged:\n{}",
        reports.join("\n")
    );
    Ok(())
}
