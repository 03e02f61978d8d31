// SPDX-License-Identifier: GPL-2.0

//! The host's VMX facilities: capabilities, per-CPU VMXON regions, and the
//! probe that proves VMX root operation works on every online CPU.

use core::ffi::c_void;

use kernel::{
    cpu,
    prelude::*,
    sync::atomic::{Atomic, Relaxed},
};

use super::{
    caps::VmxCaps,
    controls::{Controls, Unsupported},
    instr::{self, CR4_FRED},
    root::{RootError, RootWindow, VmxonRegion},
    vpid::VpidPool,
};

/// CPUID.1:ECX.VMX[bit 5].
const CPUID_1_ECX_VMX: u32 = 1 << 5;
/// CPUID.(EAX=7,ECX=1):EAX.FRED[bit 17].
const CPUID_7_1_EAX_FRED: u32 = 1 << 17;

extern "C" {
    fn rvmx_on_each_cpu(func: unsafe extern "C" fn(*mut c_void), info: *mut c_void);
}

/// VMX as the host offers it. Built once at module load.
pub(crate) struct VmxHost {
    /// The capabilities of the CPU rvmx was loaded on; every CPU is checked
    /// against them when probed.
    pub(crate) caps: VmxCaps,
    /// One VMXON region per possible CPU, indexed by CPU number.
    regions: KVec<VmxonRegion>,
    pub(crate) vpids: VpidPool,
    /// TSC ticks in 1 ms: the longest a VMX window stays open, enforced
    /// with the VMX-preemption timer. Besides bounding latency, this is
    /// what lets Bochs 3.0 leave a guest that runs with RFLAGS.IF=0: it only
    /// unmasks host interrupts at VM entry when IF changes, and the host's
    /// is 0.
    pub(crate) window_tsc: u64,
    /// APIC virtualization was asked for (module parameter `apicv`); VMs
    /// use it if the CPU has it (`Controls::apicv`).
    apicv: bool,
}

/// What [`VmxHost::probe`] found on the online CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ProbeReport {
    /// Online CPUs probed.
    pub(crate) cpus: u32,
    /// CPUs on which rvmx's own VMXON and VMXOFF succeeded.
    pub(crate) own: u32,
    /// CPUs held in VMX root operation by another hypervisor, inside which
    /// rvmx runs (VMPTRST succeeded).
    pub(crate) shared: u32,
    /// Bit n: CPU n (n < 64) is one of `shared`.
    pub(crate) shared_mask: u64,
    /// The lowest-numbered CPU that failed, and why.
    pub(crate) first_failure: Option<(u32, RootError)>,
}

impl ProbeReport {
    /// Every online CPU can run VMs, in either mode.
    pub(crate) fn all_runnable(&self) -> bool {
        self.cpus > 0 && self.own + self.shared == self.cpus
    }

    /// Every online CPU runs VMs in rvmx's own VMX operation.
    pub(crate) fn all_own(&self) -> bool {
        self.cpus > 0 && self.own == self.cpus
    }

    /// Some CPU has CR4.VMXE set outside VMX operation.
    pub(crate) fn busy(&self) -> bool {
        matches!(self.first_failure, Some((_, RootError::Busy)))
    }
}

/// Per-CPU outcome codes written by `probe_this_cpu`; failures are
/// `RootError` discriminants (2 and up).
const NOT_RUN: u32 = 0;
const USABLE: u32 = 1;
const SHARED: u32 = 0x100;

struct Probe<'a> {
    host: &'a VmxHost,
    outcome: KVec<Atomic<u32>>,
}

/// Runs on each online CPU, from `rvmx_on_each_cpu`, with interrupts off.
unsafe extern "C" fn probe_this_cpu(info: *mut c_void) {
    // SAFETY: `VmxHost::probe` passes a pointer to a live `Probe` and waits
    // for every CPU to return before it drops it.
    let probe = unsafe { &*info.cast::<Probe<'_>>() };
    // Interrupts are off, so this CPU number stays ours until we return.
    let cpu = cpu::CpuId::current().as_u32() as usize;
    let result = probe.host.check_this_cpu().and_then(|()| {
        let region = probe.host.regions.get(cpu).ok_or(RootError::NoRegion)?;
        // A shared window here is VMPTRST and nothing else: the probe may
        // have interrupted the other hypervisor with its VMCS current.
        // SAFETY: interrupts are off for the whole life of the window, which
        // ends at the end of this statement; the region is this CPU's own,
        // and no other window can be open on this CPU with interrupts off.
        unsafe { RootWindow::open(&probe.host.caps, region) }.map(|w| w.is_shared())
    });
    let code = match result {
        Ok(false) => USABLE,
        Ok(true) => SHARED,
        Err(e) => e as u32,
    };
    if let Some(slot) = probe.outcome.get(cpu) {
        slot.store(code, Relaxed);
    }
}

/// Host features the VM run loop relies on, beyond VMX itself.
fn missing_host_feature() -> Option<&'static str> {
    // CPUID.1:ECX.OSXSAVE[27]: XSAVE enabled by the kernel (guest FPU).
    if instr::cpuid(1, 0).2 & (1 << 27) == 0 {
        return Some("XSAVE enabled by the OS (CPUID.1:ECX.OSXSAVE)");
    }
    // CPUID.80000001H:EDX.RDTSCP[27]: IA32_TSC_AUX exists (switched MSR).
    if instr::cpuid(0x8000_0001, 0).3 & (1 << 27) == 0 {
        return Some("RDTSCP (IA32_TSC_AUX)");
    }
    None
}

impl VmxHost {
    /// Checks that this CPU can do what rvmx needs and reads its
    /// capabilities. `apicv`: VMs use APIC virtualization where the CPU has it.
    pub(crate) fn new(apicv: bool) -> Result<Self> {
        if instr::cpuid(1, 0).2 & CPUID_1_ECX_VMX == 0 {
            pr_err!("this CPU has no VMX (CPUID.1:ECX.VMX=0): rvmx needs an Intel CPU with VT-x, or a VM with nested VMX\n");
            return Err(ENODEV);
        }
        // SAFETY: all VMX capability MSRs `read` touches exist when
        // CPUID.1:ECX.VMX=1 (it skips the optional ones the CPU lacks).
        let caps = VmxCaps::read(|msr| unsafe { instr::rdmsr(msr) });
        if let Some(missing) = missing_host_feature() {
            pr_err!("this CPU lacks {missing}, which rvmx requires\n");
            return Err(ENODEV);
        }
        if Self::host_uses_fred() {
            pr_err!("the host delivers events with FRED; rvmx can only hand NMIs to an IDT host\n");
            return Err(ENODEV);
        }
        if let Some(missing) = caps.missing_requirement() {
            pr_err!("this CPU's VMX lacks {missing}, which rvmx requires\n");
            return Err(ENODEV);
        }
        let ncpus = cpu::nr_cpu_ids() as usize;
        let mut regions = KVec::with_capacity(ncpus, GFP_KERNEL)?;
        for _ in 0..ncpus {
            regions.push(VmxonRegion::new(caps.vmcs_revision())?, GFP_KERNEL)?;
        }
        // SAFETY: `tsc_khz` is set at boot and only read here.
        let tsc_khz = unsafe { kernel::bindings::tsc_khz };
        let window_tsc = u64::from(tsc_khz.max(1));
        Ok(Self {
            caps,
            regions,
            vpids: VpidPool::new(),
            window_tsc,
            apicv,
        })
    }

    /// Whether the host delivers events with FRED rather than the IDT.
    pub(crate) fn host_uses_fred() -> bool {
        instr::cpuid(7, 1).0 & CPUID_7_1_EAX_FRED != 0 && instr::read_cr4() & CR4_FRED != 0
    }

    /// Checks that the current CPU has the VMX the host was built for.
    fn check_this_cpu(&self) -> Result<(), RootError> {
        if instr::cpuid(1, 0).2 & CPUID_1_ECX_VMX == 0 {
            return Err(RootError::Asymmetric);
        }
        // SAFETY: this CPU has VMX (checked above), so the MSRs exist.
        let caps = VmxCaps::read(|msr| unsafe { instr::rdmsr(msr) });
        if caps != self.caps {
            return Err(RootError::Asymmetric);
        }
        Ok(())
    }

    /// The VMXON region of CPU `cpu`.
    pub(crate) fn region(&self, cpu: usize) -> Option<&VmxonRegion> {
        self.regions.get(cpu)
    }

    /// The control words VMs on this host use.
    pub(crate) fn controls(&self) -> Result<Controls, Unsupported> {
        Controls::new(&self.caps, self.apicv)
    }

    /// Opens and closes a VMX window on every online CPU, now: VMXON and
    /// VMXOFF, or VMPTRST where another hypervisor is in VMX root operation.
    pub(crate) fn probe(&self) -> Result<ProbeReport> {
        let ncpus = self.regions.len();
        let mut outcome = KVec::with_capacity(ncpus, GFP_KERNEL)?;
        for _ in 0..ncpus {
            outcome.push(Atomic::new(NOT_RUN), GFP_KERNEL)?;
        }
        let probe = Probe {
            host: self,
            outcome,
        };
        // SAFETY: `probe_this_cpu` only reads `probe` through the pointer and
        // writes its own CPU's atomic slot; `rvmx_on_each_cpu` waits until it
        // has run everywhere, so `probe` outlives every use.
        unsafe { rvmx_on_each_cpu(probe_this_cpu, (&raw const probe).cast_mut().cast()) };

        let mut report = ProbeReport::default();
        for (cpu, slot) in probe.outcome.iter().enumerate() {
            match slot.load(Relaxed) {
                NOT_RUN => continue,
                USABLE => report.own += 1,
                SHARED => {
                    report.shared += 1;
                    if cpu < 64 {
                        report.shared_mask |= 1 << cpu;
                    }
                }
                code => {
                    if report.first_failure.is_none() {
                        let err = RootError::from_code(code).unwrap_or(RootError::VmxonFailed);
                        report.first_failure = Some((cpu as u32, err));
                    }
                }
            }
            report.cpus += 1;
        }
        Ok(report)
    }
}
