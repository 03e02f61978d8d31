//! rvmx-bench: the same guest loops on `/dev/rvmx` and on `/dev/kvm`, timed
//! by the guest itself (RDTSC around N iterations), so the figures are
//! guest TSC cycles per round trip, comparable across both.
//!
//! Usage (inside the lab; `make bench` runs exactly this):
//!   rvmx-bench run rvmx >rvmx.txt     # with rvmx loaded
//!   rvmx-bench run kvm >kvm.txt       # with kvm_intel loaded
//!   rvmx-bench table rvmx.txt kvm.txt
//!   rvmx-bench run rvmx 2vcpus >rvmx.txt  # only the two-vCPU rows
//!   rvmx-bench run kvm ipi_running       # one row by name
//!
//! rvmx's ABI mirrors KVM's struct layouts (regs, sregs, memory region, the
//! run area's header and IO/MMIO exits), so one VMM loop drives both; only
//! the ioctl numbers differ.

mod guest;
mod hv;
mod irq;

use std::process::ExitCode;

use hv::Hypervisor;

/// How far ahead the armed TSC-deadline rows set their deadline.
const DEADLINE_AHEAD: u64 = 20_000;

/// One row: its name in the result files, its label in the table, the
/// iterations, and what measures it (guest TSC cycles per iteration).
struct Case {
    name: &'static str,
    describe: &'static str,
    n: u64,
    /// 2: the row runs two vCPUs on two threads.
    vcpus: u32,
    measure: fn(Hypervisor, u64) -> Result<u64, String>,
}

/// Which rows `run` runs.
enum Select<'a> {
    /// Every row.
    All,
    /// The rows with this many vCPUs.
    Vcpus(u32),
    /// This row, default or not.
    Name(&'a str),
}

impl Select<'_> {
    fn takes(&self, c: &Case) -> bool {
        match self {
            Select::All => true,
            Select::Vcpus(n) => c.vcpus == *n,
            Select::Name(name) => c.name == *name,
        }
    }
}

/// The rows, with their iteration counts (fewer for the slow exits to
/// user space: each costs tens of microseconds under Bochs). The exit rows
/// run without KVM's in-kernel irqchip (they take no interrupts); the
/// interrupt rows with it (rvmx's local APICs are always in the kernel).
const CASES: &[Case] = &[
    Case {
        name: "cpuid",
        describe: guest::Op::Cpuid.describe(),
        n: 5000,
        vcpus: 1,
        measure: |hv, n| Ok(guest::measure(hv, guest::Op::Cpuid, n)? / n),
    },
    Case {
        name: "vmcall",
        describe: guest::Op::Vmcall.describe(),
        n: 2000,
        vcpus: 1,
        measure: |hv, n| Ok(guest::measure(hv, guest::Op::Vmcall, n)? / n),
    },
    Case {
        name: "pio",
        describe: guest::Op::Pio.describe(),
        n: 2000,
        vcpus: 1,
        measure: |hv, n| Ok(guest::measure(hv, guest::Op::Pio, n)? / n),
    },
    Case {
        name: "mmio",
        describe: guest::Op::Mmio.describe(),
        n: 2000,
        vcpus: 1,
        measure: |hv, n| Ok(guest::measure(hv, guest::Op::Mmio, n)? / n),
    },
    Case {
        name: "self_ipi",
        describe: "self-IPI (x2APIC), EOI, IRETQ",
        n: 2000,
        vcpus: 1,
        measure: irq::self_ipi,
    },
    Case {
        name: "tsc_deadline_passed",
        describe: "TSC-deadline timer, deadline passed",
        n: 2000,
        vcpus: 1,
        measure: irq::deadline_now,
    },
    Case {
        name: "tsc_deadline_hlt",
        describe: "deadline +20000, HLT: late by (a)",
        n: 200,
        vcpus: 1,
        measure: |hv, n| irq::deadline_armed(hv, n, DEADLINE_AHEAD, true),
    },
    Case {
        name: "tsc_deadline_spin",
        describe: "deadline +20000, spin: late by (a)",
        n: 200,
        vcpus: 1,
        measure: |hv, n| irq::deadline_armed(hv, n, DEADLINE_AHEAD, false),
    },
    Case {
        name: "eoi",
        describe: "x2APIC EOI, nothing in service",
        n: 2000,
        vcpus: 1,
        measure: irq::eoi,
    },
    Case {
        name: "ipi_running",
        describe: "IPI to spinning vCPU 1 and back (b)",
        n: 300,
        vcpus: 2,
        measure: |hv, n| irq::ipi(hv, n, false),
    },
    Case {
        name: "ipi_halted",
        describe: "IPI to halted vCPU 1 and back (b)",
        n: 300,
        vcpus: 2,
        measure: |hv, n| irq::ipi(hv, n, true),
    },
];

/// Runs the rows `only` selects and prints `name cycles iterations` lines. A row that fails prints
/// `name - error` and the others still run.
fn run(hv: Hypervisor, only: Select) -> Result<(), String> {
    let mut failed = 0;
    for c in CASES.iter().filter(|c| only.takes(c)) {
        eprint!("rvmx-bench: {hv:?} {} ...", c.name);
        match (c.measure)(hv, c.n) {
            Ok(cycles) => {
                eprintln!(" {cycles}");
                println!("{} {} {}", c.name, cycles, c.n)
            }
            Err(e) => {
                eprintln!(" failed: {e}");
                println!("{} - {e}", c.name);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} row(s) failed on {hv:?}"));
    }
    Ok(())
}

/// `name cycles` per line; `-` (a failed row) reads as no figure.
fn read_results(path: &str) -> Result<Vec<(String, Option<u64>)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next().unwrap_or_default().to_string();
            let cycles = match w.next() {
                Some("-") => None,
                c => Some(
                    c.and_then(|c| c.parse().ok())
                        .ok_or(format!("{path}: bad line '{l}'"))?,
                ),
            };
            Ok((name, cycles))
        })
        .collect()
}

fn online_cpus() -> i64 {
    // SAFETY: sysconf has no preconditions.
    i64::from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as i32)
}

/// Prints the rows any file has, in `CASES` order, one column per file
/// (`label=path`), each with its ratio to the column labelled `kvm` when
/// there is one, and the footnotes of the rows shown. Run where the figures
/// were taken (inside the lab): the CPU count it prints is this machine's.
fn table(columns: &[&str]) -> Result<(), String> {
    let mut cols = Vec::new();
    for c in columns {
        let (label, path) = c
            .split_once('=')
            .ok_or(format!("'{c}': want LABEL=RESULTS_FILE"))?;
        cols.push((label, read_results(path)?));
    }
    let reference = cols.iter().position(|(l, _)| *l == "kvm");
    let cpus = online_cpus();
    println!(
        "guest TSC cycles per round trip (lower is better), {cpus} lab CPU{}",
        if cpus == 1 { "" } else { "s" }
    );
    let mut header = format!("{:<38}", "exit");
    for (label, _) in &cols {
        header += &format!(" {label:>12}");
    }
    for (i, (label, _)) in cols.iter().enumerate() {
        if reference.is_some_and(|r| r != i) {
            header += &format!(" {:>12}", format!("{label}/kvm"));
        }
    }
    println!("{header}");
    let mut notes = (false, false);
    for c in CASES {
        let figures: Vec<Option<Option<u64>>> = cols
            .iter()
            .map(|(_, v)| v.iter().find(|(n, _)| n == c.name).map(|(_, c)| *c))
            .collect();
        if figures.iter().all(Option::is_none) {
            continue;
        }
        notes.0 |= c.describe.ends_with("(a)");
        notes.1 |= c.describe.ends_with("(b)");
        let mut line = format!("{:<38}", c.describe);
        for f in &figures {
            let shown = match f {
                Some(Some(c)) => c.to_string(),
                Some(None) => "FAILED".into(),
                None => "-".into(),
            };
            line += &format!(" {shown:>12}");
        }
        if let Some(r) = reference {
            let base = figures[r].flatten();
            for (i, f) in figures.iter().enumerate() {
                if i == r {
                    continue;
                }
                let ratio = match (f.flatten(), base) {
                    (Some(a), Some(b)) if b > 0 => format!("{:.2}", a as f64 / b as f64),
                    _ => "-".into(),
                };
                line += &format!(" {ratio:>12}");
            }
        }
        println!("{line}");
    }
    if notes.0 {
        println!(
            "(a) mean cycles from the deadline to the handler (after its 5-instruction IDT stub), not a round trip"
        );
    }
    if notes.1 {
        if cpus >= 2 {
            println!(
                "(b) vCPU 0 and 1 on threads pinned to CPU 0 and 1, in parallel; with 2 Bochs CPUs the TSC runs at\n    another rate per instruction, so compare these figures with each other, not with a 1-CPU table"
            );
        } else {
            println!(
                "(b) vCPU 0 and 1 share the one lab CPU: each leg waits until the host scheduler runs the\n    other vCPU's thread (time slices), so this measures the host's scheduling, not the IPI path"
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["run", "rvmx"] => run(Hypervisor::Rvmx, Select::All),
        ["run", "kvm"] => run(Hypervisor::Kvm, Select::All),
        ["run", hv @ ("rvmx" | "kvm"), only] => {
            let hv = if *hv == "rvmx" { Hypervisor::Rvmx } else { Hypervisor::Kvm };
            match *only {
                "1vcpu" => run(hv, Select::Vcpus(1)),
                "2vcpus" => run(hv, Select::Vcpus(2)),
                name if CASES.iter().any(|c| c.name == name) => run(hv, Select::Name(name)),
                other => Err(format!("no row or group '{other}' (1vcpu, 2vcpus or a row name)")),
            }
        }
        ["table", columns @ ..] if !columns.is_empty() => table(columns),
        _ => Err(
            "usage: rvmx-bench run rvmx|kvm [1vcpu|2vcpus|ROW]  |  rvmx-bench table LABEL=RESULTS... (ratios to the one labelled kvm)".into(),
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
