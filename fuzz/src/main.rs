//! rvmx-fuzz: a seeded, structure-aware fuzzer of rvmx's ioctl surface,
//! run inside the lab (or on a VT-x host) against the real module.
//!
//! Usage: rvmx-fuzz [--calls N] [--seed S] [--race-every K] [--no-rmmod]
//!                  [--module PATH]
//!
//! It makes about N ioctls (default 10000) from seed S (default 1): valid
//! and invalid arguments on the device, VM and vCPU fds, random processor
//! state and short random guest code, memory-slot churn; every K
//! operations (default 200; 0 = never, for an exact replay) a race, in
//! which one thread runs a vCPU while another deletes its slots, unmaps
//! its memory, closes its fds, forks or floods it with MSIs, and a child
//! process that exits in the middle of a RUN. Then it checks the host:
//! no kernel report in /dev/kmsg since the start, rvmx's module reference
//! count back at 0 with every fd closed, and rmmod (then insmod again)
//! works. It prints KTAP (four results), the calls per ioctl with their
//! outcomes, and "N problems"; it exits non-zero if there is any.

mod guest;
mod race;
mod rng;
mod stats;
mod sys;
mod world;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use labguest::host::{wait_refcnt_zero, Kmsg};

struct Args {
    calls: u64,
    seed: u64,
    race_every: u64,
    rmmod: bool,
    module: PathBuf,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: rvmx-fuzz [--calls N] [--seed S] [--race-every K] [--no-rmmod] [--module PATH]"
    );
    ExitCode::from(2)
}

fn modules_dir() -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Path::new("/lib/modules").join(release.trim())
}

fn insmod(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: a valid fd and an empty NUL-terminated parameter string.
    let ret = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn rmmod(name: &str) -> std::io::Result<()> {
    let name = CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a NUL-terminated module name.
    let ret = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn parse() -> Result<Args, ExitCode> {
    let mut a = Args {
        calls: 10_000,
        seed: 1,
        race_every: 200,
        rmmod: true,
        module: modules_dir().join("extra/rvmx.ko"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = || {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(usage)
        };
        match arg.as_str() {
            "--calls" => a.calls = num()?,
            "--seed" => a.seed = num()?,
            "--race-every" => a.race_every = num()?,
            "--no-rmmod" => a.rmmod = false,
            "--module" => a.module = it.next().ok_or_else(usage)?.into(),
            "--child-exit" => race::child_exit_main(num()?),
            _ => return Err(usage()),
        }
    }
    Ok(a)
}

fn result(n: u32, ok: bool, name: &str, detail: &str) -> bool {
    if ok {
        println!("ok {n} {name}");
    } else {
        for l in detail.lines() {
            println!("# {name}: {l}");
        }
        println!("not ok {n} {name}");
    }
    ok
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(code) => return code,
    };
    println!("KTAP version 1");
    println!("1..4");
    if !Path::new("/sys/module/rvmx").exists() {
        if let Err(e) = insmod(&args.module) {
            println!("# insmod {}: {e}", args.module.display());
            println!("not ok 1 fuzz");
            return ExitCode::FAILURE;
        }
    }
    let mut kmsg = Kmsg::open().ok();
    sys::catch_sigusr1();
    sys::watch_for_hangs(Duration::from_secs(10));
    println!(
        "# rvmx-fuzz: {} calls from seed {} (replay: rvmx-fuzz --seed {} --calls {} --race-every {})",
        args.calls, args.seed, args.seed, args.calls, args.race_every
    );
    let started = Instant::now();
    let mut epoch = 0u64;
    let (mut races, mut exits) = (0u64, 0u64);
    let mut shown = 0u64;
    while stats::calls() < args.calls {
        // A fresh world every 2000 operations, from a seed derived from
        // the run's.
        let mut w = world::World::new(args.seed.wrapping_mul(1_000_003).wrapping_add(epoch));
        for _ in 0..2000 {
            if stats::calls() >= args.calls {
                break;
            }
            w.step();
            if stats::calls() / 5000 > shown {
                shown = stats::calls() / 5000;
                println!(
                    "# {} calls, {} problems, {:.0} s",
                    stats::calls(),
                    stats::problems().len(),
                    started.elapsed().as_secs_f64()
                );
            }
            if args.race_every != 0 && w.at.op.is_multiple_of(args.race_every) {
                let mut rng = w.rng.fork();
                race::race(&mut rng, &w.at, &mut w.scratch);
                races += 1;
                if rng.one_in(3) {
                    race::child_exit(&mut rng, &w.at);
                    exits += 1;
                }
            }
        }
        epoch += 1;
    }
    let elapsed = started.elapsed();
    for line in stats::summary() {
        println!("# {line}");
    }
    println!(
        "# {} calls in {:.1} s, {races} races, {exits} exiting children",
        stats::calls(),
        elapsed.as_secs_f64()
    );

    let problems = stats::problems();
    let mut all = result(
        1,
        problems.is_empty(),
        "fuzz",
        &problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    );

    let reports = kmsg.as_mut().map(|k| k.reports());
    let clean = reports.as_ref().is_some_and(|r| r.is_empty());
    let why = match &reports {
        None => "cannot read /dev/kmsg".to_string(),
        Some(r) => r.join("\n"),
    };
    all &= result(2, clean, "kernel_log_clean", &why);

    let refcnt = wait_refcnt_zero("rvmx", Duration::from_secs(5));
    all &= result(
        3,
        refcnt == Some(0),
        "module_refcount_zero",
        &format!("rvmx refcnt {refcnt:?} after every fd was closed, want 0"),
    );

    let mut n_problems = problems.len() + usize::from(!clean) + usize::from(refcnt != Some(0));
    if args.rmmod {
        let r = rmmod("rvmx")
            .map_err(|e| format!("rmmod rvmx: {e}"))
            .and_then(|()| {
                insmod(&args.module)
                    .map_err(|e| format!("insmod {} again: {e}", args.module.display()))
            });
        n_problems += usize::from(r.is_err());
        all &= result(
            4,
            r.is_ok(),
            "rmmod_and_reload",
            r.as_ref().err().map_or("", |s| s),
        );
    } else {
        println!("ok 4 rmmod_and_reload # SKIP --no-rmmod");
    }
    println!("# {n_problems} problems");
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
