//! rvmx selftests: run inside the lab VM (or on a VT-x host) against the real
//! module and `/dev/rvmx`, printing KTAP like kselftest.
//!
//! Usage: rvmx-selftests [--module PATH] [--group GROUP] [--filter SUBSTRING]
//!
//! `--module` is the rvmx.ko the load/unload tests use (default
//! /lib/modules/$(uname -r)/extra/rvmx.ko, where `make modules_install`
//! and the lab put it); rvmx is loaded from it first if it is not loaded.
//! `--group` runs one group: device, vm, irq (interrupts, the local APIC and
//! their isolation tests), hostile (hostile guests), stats (the statistics
//! files), module (load and unload, which reload rvmx with its default
//! parameters) or lifecycle.

mod beside_kvm;
mod device;
mod guest;
mod hostile;
mod ioctl;
mod irq;
mod kmod;
mod ktap;
mod kvm;
mod lifecycle;
mod module;
mod stats;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

/// What every test may use.
pub struct Ctx {
    pub module: PathBuf,
}

fn main() -> ExitCode {
    let mut module = kmod::modules_dir().join("extra/rvmx.ko");
    let mut filter = None;
    let groups: [(&str, &[ktap::Test]); 7] = [
        ("device", device::TESTS),
        ("vm", vm::TESTS),
        ("irq", irq::TESTS),
        ("hostile", hostile::TESTS),
        ("stats", stats::TESTS),
        ("module", module::TESTS),
        ("lifecycle", lifecycle::TESTS),
    ];
    let mut group = None;
    let usage =
        "usage: rvmx-selftests [--module PATH] [--group device|vm|irq|hostile|stats|module|lifecycle] [--filter SUBSTRING]";
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--module", Some(path)) => module = path.into(),
            ("--filter", Some(f)) => filter = Some(f),
            ("--group", Some(g)) if groups.iter().any(|(n, _)| *n == g) => group = Some(g),
            _ => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        }
    }
    if !kmod::is_loaded("rvmx") {
        if let Err(e) = kmod::insmod(&module) {
            // Still print a plan, so the harness sees the failure as a test.
            println!(
                "KTAP version 1\n1..1\n# insmod {}: {e}\nnot ok 1 load_rvmx",
                module.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let ctx = Ctx { module };
    let tests: Vec<ktap::Test> = groups
        .iter()
        .filter(|(name, _)| group.as_deref().is_none_or(|g| g == *name))
        .flat_map(|(_, tests)| tests.iter())
        .filter(|t| filter.as_deref().is_none_or(|f| t.name.contains(f)))
        .map(|t| ktap::Test {
            name: t.name,
            run: t.run,
        })
        .collect();
    if ktap::run(&ctx, &tests) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
