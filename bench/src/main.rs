//! rvmx-bench: the same guest loops on `/dev/rvmx` and on `/dev/kvm`, timed
//! by the guest itself (RDTSC around N iterations), so the figures are
//! guest TSC cycles per round trip, comparable across both.
//!
//! Usage (inside the lab; `make bench` runs exactly this):
//!   rvmx-bench run rvmx >rvmx.txt     # with rvmx loaded
//!   rvmx-bench run kvm >kvm.txt       # with kvm_intel loaded
//!   rvmx-bench table rvmx.txt kvm.txt
//!
//! rvmx's ABI mirrors KVM's struct layouts (regs, sregs, memory region, the
//! run area's header and IO/MMIO exits), so one VMM loop drives both; only
//! the ioctl numbers differ.

mod guest;
mod hv;

use std::process::ExitCode;

use hv::Hypervisor;

/// The loops, with their iteration counts (fewer for the slow exits to
/// user space: each costs tens of microseconds under Bochs).
const CASES: [(guest::Op, u64); 4] = [
    (guest::Op::Cpuid, 5000),
    (guest::Op::Vmcall, 2000),
    (guest::Op::Pio, 2000),
    (guest::Op::Mmio, 2000),
];

fn run(hv: Hypervisor) -> Result<(), String> {
    for (op, n) in CASES {
        let cycles = guest::measure(hv, op, n)?;
        println!("{} {} {}", op.name(), cycles / n, n);
    }
    Ok(())
}

fn read_results(path: &str) -> Result<Vec<(String, u64)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next().unwrap_or_default().to_string();
            let cycles = w
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or(format!("{path}: bad line '{l}'"))?;
            Ok((name, cycles))
        })
        .collect()
}

fn table(rvmx: &str, kvm: &str) -> Result<(), String> {
    let (r, k) = (read_results(rvmx)?, read_results(kvm)?);
    println!("guest TSC cycles per round trip (lower is better)");
    println!(
        "{:<34} {:>10} {:>10} {:>8}",
        "exit", "rvmx", "kvm", "rvmx/kvm"
    );
    for (op, _) in CASES {
        let find = |v: &[(String, u64)]| v.iter().find(|(n, _)| n == op.name()).map(|(_, c)| *c);
        let (rc, kc) = (find(&r), find(&k));
        let show = |c: Option<u64>| c.map_or("-".to_string(), |c| c.to_string());
        let ratio = match (rc, kc) {
            (Some(a), Some(b)) if b > 0 => format!("{:.2}", a as f64 / b as f64),
            _ => "-".into(),
        };
        println!(
            "{:<34} {:>10} {:>10} {:>8}",
            op.describe(),
            show(rc),
            show(kc),
            ratio
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["run", "rvmx"] => run(Hypervisor::Rvmx),
        ["run", "kvm"] => run(Hypervisor::Kvm),
        ["table", rvmx, kvm] => table(rvmx, kvm),
        _ => Err(
            "usage: rvmx-bench run rvmx|kvm  |  rvmx-bench table RVMX_RESULTS KVM_RESULTS".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rvmx-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
