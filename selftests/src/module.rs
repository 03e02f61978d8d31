//! Tests of the module's life cycle: unload refused while in use, repeated
//! load/unload, and living beside kvm_intel: rvmx VMs run inside KVM's VMX
//! root operation, at the same time as KVM's guests, while either module
//! comes and goes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use uapi::{sys, Rvmx, DEVICE_PATH};

use crate::beside_kvm::{KvmPattern, RvmxPattern};
use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::{ensure, kmod, Ctx};

pub const TESTS: &[Test] = &[
    Test {
        name: "rmmod_refused_while_open",
        run: rmmod_refused_while_open,
    },
    Test {
        name: "rmmod_refused_while_a_vm_lives",
        run: rmmod_refused_while_a_vm_lives,
    },
    Test {
        name: "load_unload_20_cycles",
        run: load_unload_20_cycles,
    },
    Test {
        name: "rvmx_runs_inside_kvm_intel",
        run: rvmx_runs_inside_kvm_intel,
    },
    Test {
        name: "kvm_and_rvmx_guests_at_once",
        run: kvm_and_rvmx_guests_at_once,
    },
    Test {
        name: "kvm_intel_load_unload_while_rvmx_runs",
        run: kvm_intel_load_unload_while_rvmx_runs,
    },
    Test {
        name: "rmmod_rvmx_while_kvm_guests_run",
        run: rmmod_rvmx_while_kvm_guests_run,
    },
];

fn reload(ctx: &Ctx) -> TestResult {
    kmod::rmmod("rvmx").ctx("rmmod rvmx")?;
    ensure!(
        kmod::wait_for(Path::new(DEVICE_PATH), false),
        "{DEVICE_PATH} still there after rmmod"
    );
    kmod::insmod(&ctx.module).ctx(&format!("insmod {}", ctx.module.display()))?;
    ensure!(
        kmod::wait_for(Path::new(DEVICE_PATH), true),
        "{DEVICE_PATH} missing after insmod"
    );
    Ok(())
}

fn rmmod_refused_while_open(ctx: &Ctx) -> TestResult {
    let fd = Rvmx::open(DEVICE_PATH).ctx("open")?;
    match kmod::rmmod("rvmx") {
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => {
            return Err(Outcome::Fail(format!(
                "rmmod with an open fd: {e}, want EWOULDBLOCK"
            )))
        }
        Ok(()) => {
            // Put it back so the remaining tests can run.
            let _ = kmod::insmod(&ctx.module);
            return Err(Outcome::Fail(
                "rmmod succeeded while /dev/rvmx was open".into(),
            ));
        }
    }
    fd.api_version()
        .ctx("the open fd after the refused rmmod")?;
    drop(fd);
    reload(ctx)
}

fn load_unload_20_cycles(ctx: &Ctx) -> TestResult {
    for i in 0..20 {
        reload(ctx).map_err(|e| match e {
            Outcome::Fail(m) => Outcome::Fail(format!("cycle {i}: {m}")),
            skip => skip,
        })?;
        let v = Rvmx::open(DEVICE_PATH)
            .and_then(|fd| fd.api_version())
            .ctx("API version")?;
        ensure!(v == sys::RVMX_API_VERSION, "cycle {i}: API version {v}");
    }
    Ok(())
}

/// The capability report says rvmx runs inside another hypervisor's VMX
/// operation on every CPU (`shared`), or in its own on every CPU.
fn expect_mode(shared: bool, when: &str) -> TestResult {
    let c = Rvmx::open(DEVICE_PATH)
        .and_then(|fd| fd.vmx_caps())
        .ctx("RVMX_GET_VMX_CAPS")?;
    let f = c.flags;
    let (usable, busy, is_shared) = (
        f & sys::RVMX_CAP_VMX_USABLE != 0,
        f & sys::RVMX_CAP_VMX_BUSY != 0,
        f & sys::RVMX_CAP_VMX_SHARED != 0,
    );
    ensure!(!busy, "{when}: flags {f:#x} say BUSY");
    let all = if c.cpus_probed >= 64 {
        u64::MAX
    } else {
        (1u64 << c.cpus_probed) - 1
    };
    if shared {
        ensure!(
            is_shared && !usable && c.cpus_shared == c.cpus_probed && c.shared_cpu_mask == all,
            "{when}: flags {f:#x}, {} of {} CPUs shared (mask {:#x}), want SHARED on all",
            c.cpus_shared,
            c.cpus_probed,
            c.shared_cpu_mask
        );
    } else {
        ensure!(
            usable && !is_shared && c.cpus_shared == 0 && c.shared_cpu_mask == 0,
            "{when}: flags {f:#x}, {} CPUs shared, want USABLE and none shared",
            c.cpus_shared
        );
    }
    Ok(())
}

/// Skips unless this test may load and unload kvm_intel.
fn kvm_intel_ours() -> TestResult {
    if kmod::is_loaded("kvm_intel") {
        return Err(Outcome::Skip(
            "kvm_intel was loaded before the tests; not touching it".into(),
        ));
    }
    if !kmod::available("kvm_intel") {
        return Err(Outcome::Skip(
            "kvm_intel is not available to modprobe".into(),
        ));
    }
    Ok(())
}

/// Bochs needs KVM without APICv (see docs/testing.md).
fn load_kvm_intel() -> TestResult {
    kmod::modprobe(&["kvm_intel", "enable_apicv=0"]).map_err(Outcome::Fail)
}

fn unload_kvm_intel() -> TestResult {
    kmod::modprobe(&["-r", "kvm_intel"]).map_err(Outcome::Fail)
}

/// Loads kvm_intel, runs `f`, unloads kvm_intel, and checks that rvmx is
/// back in its own VMX operation.
fn beside_kvm_intel(f: impl FnOnce() -> TestResult) -> TestResult {
    kvm_intel_ours()?;
    load_kvm_intel()?;
    let result = f();
    let unloaded = unload_kvm_intel();
    result?;
    unloaded?;
    expect_mode(false, "after kvm_intel was removed")
}

fn rounds(g: &mut RvmxPattern, n: u32) -> TestResult {
    for _ in 0..n {
        g.round().map_err(Outcome::Fail)?;
    }
    Ok(())
}

/// A KVM pattern guest on its own thread, rounds counted, until stopped.
struct KvmThread {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU32>,
    handle: thread::JoinHandle<Result<u32, String>>,
}

impl KvmThread {
    fn start(pattern: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU32::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let handle = thread::spawn(move || {
            let mut g = KvmPattern::new(pattern).map_err(|e| format!("KVM guest setup: {e}"))?;
            while !s.load(Ordering::Relaxed) {
                g.round()?;
                r.store(g.rounds, Ordering::Relaxed);
            }
            Ok(g.rounds)
        });
        Self {
            stop,
            rounds,
            handle,
        }
    }

    fn rounds(&self) -> u32 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Runs `f` until the KVM guest has done `min` more rounds (and `f`
    /// returned true at least `min` times), for at most 120 s.
    fn alongside(&self, min: u32, mut f: impl FnMut() -> TestResult) -> TestResult {
        let (start, t0) = (self.rounds(), Instant::now());
        let mut ours = 0;
        while ours < min || self.rounds().saturating_sub(start) < min {
            ensure!(
                !self.handle.is_finished(),
                "the KVM guest's thread stopped after {} rounds",
                self.rounds()
            );
            ensure!(
                t0.elapsed() < Duration::from_secs(120),
                "after 120 s: {ours} rvmx rounds, {} KVM rounds",
                self.rounds() - start
            );
            f()?;
            ours += 1;
        }
        Ok(())
    }

    fn stop(self) -> Result<u32, Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Outcome::Fail(e)),
            Err(_) => Err(Outcome::Fail("the KVM guest's thread panicked".into())),
        }
    }
}

const RVMX_PATTERN: u32 = 0x5a5a_0001;
const KVM_PATTERN: u32 = 0xa5a5_0002;

fn rvmx_runs_inside_kvm_intel(ctx: &Ctx) -> TestResult {
    beside_kvm_intel(|| {
        expect_mode(true, "with kvm_intel loaded")?;
        let mut g = RvmxPattern::new(RVMX_PATTERN)?;
        rounds(&mut g, 100)?;
        drop(g);
        // rvmx loads beside kvm_intel and says so.
        reload(ctx)?;
        expect_mode(true, "after reload beside kvm_intel")?;
        let mut g = RvmxPattern::new(RVMX_PATTERN)?;
        rounds(&mut g, 100)
    })
}

fn kvm_and_rvmx_guests_at_once(_: &Ctx) -> TestResult {
    beside_kvm_intel(|| {
        let kvm = KvmThread::start(KVM_PATTERN);
        let mut g = RvmxPattern::new(RVMX_PATTERN)?;
        // Besides the two threads taking turns, rounds on this thread
        // alternate with a second KVM guest's, each KVM_RUN right after
        // a window that had rvmx's VMCS current.
        let mut k2 = KvmPattern::new(KVM_PATTERN ^ 0xff).ctx("second KVM guest")?;
        let run = kvm.alongside(200, || {
            g.round().map_err(Outcome::Fail)?;
            k2.round().map_err(Outcome::Fail)
        });
        let kvm_rounds = kvm.stop();
        run?;
        let kvm_rounds = kvm_rounds?;
        println!(
            "# {} rvmx rounds, {} + {} KVM rounds",
            g.rounds, kvm_rounds, k2.rounds
        );
        Ok(())
    })
}

fn kvm_intel_load_unload_while_rvmx_runs(_: &Ctx) -> TestResult {
    kvm_intel_ours()?;
    expect_mode(false, "before kvm_intel")?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let (s, d) = (stop.clone(), done.clone());
    // One rvmx VM, running rounds all along, through three loads and
    // unloads of kvm_intel: its windows switch between own and shared.
    let rvmx = thread::spawn(move || -> Result<u32, String> {
        let mut g = RvmxPattern::new(RVMX_PATTERN).map_err(|e| match e {
            Outcome::Fail(m) | Outcome::Skip(m) => m,
        })?;
        while !s.load(Ordering::Relaxed) {
            g.round()?;
            d.store(g.rounds, Ordering::Relaxed);
        }
        Ok(g.rounds)
    });
    let wait_rounds = |n: u32| -> TestResult {
        let (start, t0) = (done.load(Ordering::Relaxed), Instant::now());
        while done.load(Ordering::Relaxed).saturating_sub(start) < n {
            ensure!(!rvmx.is_finished(), "the rvmx guest's thread stopped");
            ensure!(
                t0.elapsed() < Duration::from_secs(120),
                "the rvmx guest did not make {n} rounds in 120 s"
            );
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    };
    let result = (|| {
        for cycle in 0..3 {
            wait_rounds(20)?;
            load_kvm_intel().map_err(|e| match e {
                Outcome::Fail(m) => Outcome::Fail(format!("cycle {cycle}: {m}")),
                skip => skip,
            })?;
            expect_mode(true, &format!("cycle {cycle}, kvm_intel loaded"))?;
            wait_rounds(20)?;
            {
                let mut k = KvmPattern::new(KVM_PATTERN).ctx("KVM guest")?;
                for _ in 0..20 {
                    k.round().map_err(Outcome::Fail)?;
                }
            }
            wait_rounds(20)?;
            unload_kvm_intel()?;
            expect_mode(false, &format!("cycle {cycle}, kvm_intel removed"))?;
        }
        wait_rounds(20)
    })();
    stop.store(true, Ordering::Relaxed);
    let joined = rvmx.join();
    if kmod::is_loaded("kvm_intel") {
        let _ = unload_kvm_intel();
    }
    result?;
    match joined {
        Ok(Ok(n)) => {
            println!("# {n} rvmx rounds across 3 loads of kvm_intel");
            Ok(())
        }
        Ok(Err(e)) => Err(Outcome::Fail(e)),
        Err(_) => Err(Outcome::Fail("the rvmx guest's thread panicked".into())),
    }
}

fn rmmod_rvmx_while_kvm_guests_run(ctx: &Ctx) -> TestResult {
    beside_kvm_intel(|| {
        let kvm = KvmThread::start(KVM_PATTERN);
        let result = (|| {
            for cycle in 0..3 {
                let mut g = RvmxPattern::new(RVMX_PATTERN ^ cycle)?;
                kvm.alongside(30, || g.round().map_err(Outcome::Fail))?;
                drop(g);
                reload(ctx).map_err(|e| match e {
                    Outcome::Fail(m) => Outcome::Fail(format!("cycle {cycle}: {m}")),
                    skip => skip,
                })?;
                let before = kvm.rounds();
                thread::sleep(Duration::from_millis(20));
                ensure!(
                    !kvm.handle.is_finished(),
                    "cycle {cycle}: the KVM guest stopped after rvmx was reloaded (at {before} rounds)"
                );
            }
            Ok(())
        })();
        let n = kvm.stop();
        result?;
        println!("# {} KVM rounds through 3 reloads of rvmx", n?);
        Ok(())
    })
}

fn rmmod_refused_while_a_vm_lives(ctx: &Ctx) -> TestResult {
    let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
    let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
    let vcpu = vm.create_vcpu(0).ctx("RVMX_CREATE_VCPU")?;
    drop(rvmx);
    drop(vm);
    // Only the vCPU fd is left, and it holds the module.
    match kmod::rmmod("rvmx") {
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => {
            return Err(Outcome::Fail(format!(
                "rmmod with a vCPU fd open: {e}, want EWOULDBLOCK"
            )))
        }
        Ok(()) => {
            let _ = kmod::insmod(&ctx.module);
            return Err(Outcome::Fail(
                "rmmod succeeded while a vCPU fd was open".into(),
            ));
        }
    }
    vcpu.regs().ctx("the vCPU after the refused rmmod")?;
    drop(vcpu);
    reload(ctx)
}
