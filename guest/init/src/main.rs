//! PID 1 of the guest that vmmctl's lab tests boot (see
//! scripts/vmmctl-selftests). It prints a marker with the guest TSC (the
//! boot time `make bench` reports), checks what the kernel command line
//! asks after `--`, and ends the VM the way it was told:
//!
//!   cpus=N          the kernel must see N CPUs
//!   sleep_ms=N      a sleep of N ms must span N ms of TSC at the frequency
//!                   CPUID leaf 0x15 (or 0x16) advertises, within 5 %
//!   then=ACTION     poweroff (default), reboot, panic (init exits),
//!                   hang (sleep until the VMM stops the VM), or shell
//!                   (busybox sh on the console, for typed commands)
//!
//! Every line starts with "guest-init:"; the last is "guest-init: result
//! ok" or "guest-init: result FAIL <why>".

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    // Cycles since the vCPU's TSC was zeroed at power-on: the boot time.
    // SAFETY: RDTSC has no preconditions on x86-64.
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    setup_console();
    println!("guest-init: VMMCTL-INIT-MARKER tsc={tsc}");
    let failures = checks();
    match &failures[..] {
        [] => println!("guest-init: result ok"),
        f => println!("guest-init: result FAIL {}", f.join("; ")),
    }
    let then = arg("then").unwrap_or_else(|| "poweroff".into());
    println!("guest-init: then {then}");
    // The tty drains asynchronously: flush it before the machine stops.
    // SAFETY: tcdrain on our own stdout descriptor.
    unsafe { libc::tcdrain(1) };
    let cmd = match then.as_str() {
        "reboot" => libc::RB_AUTOBOOT,
        // Returning from PID 1 makes the kernel panic.
        "panic" => return,
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        // If the shell cannot start, init returns: the kernel panics, and
        // the test sees why on the console.
        "shell" => return shell(),
        _ => libc::RB_POWER_OFF,
    };
    // SAFETY: reboot(2) with a valid command; it does not return on success.
    unsafe { libc::reboot(cmd) };
    println!(
        "guest-init: reboot({then}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Replaces init with busybox's shell on the console, its applets
/// (poweroff, ...) installed in /bin. Returns only if that fails.
fn shell() {
    let installed = Command::new("/bin/busybox")
        .args(["--install", "-s", "/bin"])
        .status();
    if !installed.as_ref().is_ok_and(|s| s.success()) {
        println!("guest-init: busybox --install failed: {installed:?}");
    }
    let err = Command::new("/bin/sh").env("PATH", "/bin").exec();
    println!("guest-init: cannot start /bin/sh: {err}");
}

/// /dev, /proc, /sys, and the console as stdin/stdout/stderr (the
/// initramfs has no /dev/console node for the kernel to open).
fn setup_console() {
    for (fs, dir) in [("devtmpfs", "/dev"), ("proc", "/proc"), ("sysfs", "/sys")] {
        let _ = std::fs::create_dir_all(dir);
        let (src, target) = (CString::new(fs).unwrap(), CString::new(dir).unwrap());
        // SAFETY: NUL-terminated strings that outlive the call.
        unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    if let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: duplicating a descriptor we own onto 0..2.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

/// The TSC frequency the CPU advertises: leaf 0x15 (crystal Hz times
/// EBX/EAX), else leaf 0x16 (base MHz).
fn advertised_tsc_hz() -> Option<u64> {
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max >= 0x15 {
        let l = core::arch::x86_64::__cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax));
        }
    }
    if max >= 0x16 {
        let mhz = core::arch::x86_64::__cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1_000_000);
        }
    }
    None
}

/// Sleeps `ms` and checks that the TSC advanced `ms` at the advertised
/// frequency, within 5 %: the guest's timer fires when its clock says, and
/// its clock runs at the rate the CPU claims.
fn clock_rate(ms: u64) -> Result<(), String> {
    let hz = advertised_tsc_hz().ok_or("CPUID advertises no TSC frequency (leaves 0x15/0x16)")?;
    // SAFETY: RDTSC has no preconditions on x86-64.
    let c0 = unsafe { core::arch::x86_64::_rdtsc() };
    std::thread::sleep(Duration::from_millis(ms));
    // SAFETY: as above.
    let c1 = unsafe { core::arch::x86_64::_rdtsc() };
    let measured_ms = c1.wrapping_sub(c0) / (hz / 1000).max(1);
    println!("guest-init: sleep {ms} ms took {measured_ms} ms of TSC at {hz} Hz");
    if measured_ms.abs_diff(ms) * 20 > ms {
        return Err(format!(
            "a {ms} ms sleep took {measured_ms} ms of TSC (more than 5 % off)"
        ));
    }
    Ok(())
}

/// `key=value` from the arguments the kernel passed to init.
fn arg(key: &str) -> Option<String> {
    std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix(&format!("{key}=")).map(str::to_owned))
}

fn checks() -> Vec<String> {
    let mut failures = Vec::new();
    let online = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("guest-init: nproc={online}");
    if let Some(want) = arg("cpus") {
        if want.parse() != Ok(online) {
            failures.push(format!("nproc is {online}, want {want}"));
        }
    }
    // A sleep returns only when a timer interrupt fires: if it does, and
    // both clocks advanced, the guest's timer works.
    let t0 = Instant::now();
    // SAFETY: RDTSC has no preconditions on x86-64.
    let c0 = unsafe { core::arch::x86_64::_rdtsc() };
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: as above.
    let c1 = unsafe { core::arch::x86_64::_rdtsc() };
    let slept = t0.elapsed();
    println!(
        "guest-init: timer slept={}us tsc+={}",
        slept.as_micros(),
        c1.wrapping_sub(c0)
    );
    if slept < Duration::from_millis(20) || c1 <= c0 {
        failures.push("the clocks did not advance across a sleep".into());
    }
    if let Some(ms) = arg("sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
        if let Err(why) = clock_rate(ms) {
            failures.push(why);
        }
    }
    let _ = std::io::stdout().flush();
    failures
}
