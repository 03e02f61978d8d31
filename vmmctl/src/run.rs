//! `vmmctl run`: build the VM, boot the kernel, serve it until it ends.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::boot::{self, cpuid, BootConfig};
use crate::cli::RunArgs;
use crate::console::{self, RawTerminal};
use crate::control::{Control, Outcome};
use crate::devices::irq::Interrupts;
use crate::devices::serial::{self, ConsoleOut, Serial};
use crate::devices::Devices;
use crate::hv_stats::{self, HvStats, StatMode};
use crate::hypervisor::{Backend, Irqchip};
use crate::vcpu::VcpuId;
use crate::{memory, rss, signals, vcpu};

pub fn run(backend: Backend, args: &RunArgs) -> Result<Outcome> {
    // The hypervisor first: a backend that cannot run VMs says so before
    // any file is read.
    let hv = backend.open()?;
    let mut vm = hv.create_vm()?;
    let supported = hv.supported_cpuid()?;

    let ram = memory::ram_ranges(args.mem)?;
    let mem = Arc::new(memory::create(&ram)?);
    let boot_state = boot::load(
        &mem,
        &BootConfig {
            kernel: &args.kernel,
            initrd: args.initrd.as_deref(),
            cmdline: &args.cmdline,
            cpus: args.cpus,
            ram: &ram,
            legacy_pic: matches!(vm.irqchip(), Irqchip::Full),
        },
    )?;
    vm.set_memory(mem.clone())?;

    let control = Arc::new(Control::new()?);
    // The firmware tables give the I/O APIC the ID after the last vCPU.
    let irqs = Interrupts::new(&*vm, args.cpus);
    let serial_irq = irqs
        .line(&*vm, serial::IRQ)
        .context("COM1's interrupt line")?;
    let out = ConsoleOut::new(Box::new(std::io::stdout()), control.clone());
    let devices = Arc::new(Devices::new(
        Serial::new(serial_irq, out),
        irqs.ioapic(),
        control.clone(),
    ));

    let mut vcpus = Vec::with_capacity(usize::from(args.cpus));
    for id in 0..args.cpus {
        let mut v = vm.create_vcpu(id)?;
        let ctx = || format!("setting up vCPU {id}");
        v.set_cpuid(&cpuid::normalize(&supported, id, args.cpus))
            .with_context(ctx)?;
        v.set_msrs(&boot::boot_msrs()).with_context(ctx)?;
        if id == 0 {
            v.set_cpu_state(&boot_state).with_context(ctx)?;
        }
        vcpus.push(v);
    }
    // Opened before the vCPUs go to their threads (KVM's files are per
    // vCPU), and held while the VM runs even without --stat, so that
    // `vmmctl stat` can watch this process.
    let hv_stats = match HvStats::open(&*vm, &vcpus) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) if args.stat.is_some() => return Err(e),
        Err(_) => None,
    };

    signals::install(&control)?;
    vcpu::install_kick_handler()?;
    let terminal = RawTerminal::enable()?;
    console::spawn_input(devices.clone(), control.clone())?;
    let started = Instant::now();
    let mut threads = Vec::with_capacity(vcpus.len());
    for (id, v) in (0u8..).zip(vcpus) {
        let who = VcpuId {
            id,
            hypervisor: backend,
        };
        match vcpu::spawn(who, v, devices.clone(), control.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                control.finish(Outcome::Error(format!("{e:#}")));
                break;
            }
        }
    }

    let live = match (&hv_stats, args.stat) {
        (Some(s), Some(StatMode::Live)) => Some(hv_stats::spawn_live(s.clone(), control.clone())?),
        _ => None,
    };

    let outcome = wait(&control);
    let stats = vcpu::stop_all(threads);
    let wall = started.elapsed();
    if let Some(t) = live {
        let _ = t.join();
    }
    drop(terminal);
    let _ = std::io::stdout().flush();
    if let (Some(s), Some(StatMode::Summary)) = (&hv_stats, args.stat) {
        hv_stats::print_summary(s, wall);
    }
    if args.stats {
        eprint!("{}", stats.report(wall));
        report_memory(&mem, args.mem);
    }
    Ok(outcome)
}

/// Sleeps until some thread records an outcome or a signal arrives.
fn wait(control: &Control) -> Outcome {
    loop {
        if let Some(o) = control.outcome() {
            return o;
        }
        if let Some(sig) = signals::received() {
            control.finish(Outcome::Signal(sig));
            continue;
        }
        // EINTR (a signal) is fine: the loop looks again.
        let _ = control.wake_fd().read();
    }
}

/// vmmctl's own footprint: what is resident beyond the guest's pages.
fn report_memory(mem: &vm_memory::GuestMemoryMmap, guest_size: u64) {
    match (rss::process_rss(), rss::guest_resident(mem)) {
        (Ok(total), Ok(guest)) => eprintln!(
            "vmmctl: rss {} KiB = guest RAM resident {} KiB (of {} MiB) + vmmctl {} KiB",
            total >> 10,
            guest >> 10,
            guest_size >> 20,
            total.saturating_sub(guest) >> 10
        ),
        (Err(e), _) | (_, Err(e)) => eprintln!("vmmctl: cannot measure memory: {e:#}"),
    }
}

/// The backend `run` uses when the user names none.
pub fn default_backend() -> Backend {
    Backend::default_for(Path::new(uapi::DEVICE_PATH), Path::new("/dev/kvm"))
}
