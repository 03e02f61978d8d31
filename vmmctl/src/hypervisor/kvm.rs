//! The KVM backend (/dev/kvm through kvm-ioctls). KVM emulates the
//! interrupt controllers (PIC, IOAPIC, local APICs) and the PIT in the
//! kernel; userspace sees port I/O, MMIO and a few special exits.

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_pit_config, kvm_segment,
    kvm_userspace_memory_region, CpuId, Msrs, KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{CpuState, CpuidEntry, Hypervisor, InternalError, Irqchip, Segment, Vcpu, Vm, VmExit};

/// KVM needs three pages of guest-physical space for the real-mode TSS of
/// CPUs without unrestricted guest; put them just below the BIOS area at
/// the top of 4 GiB, where no RAM or device lives (as QEMU and Firecracker
/// do).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// Capabilities without which vmmctl's KVM backend cannot work.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
];

pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
}

impl Kvm {
    pub fn open() -> Result<Self> {
        let kvm = kvm_ioctls::Kvm::new().context(
            "cannot open /dev/kvm: load kvm_intel or kvm_amd, and check that you may \
             write /dev/kvm (group kvm)",
        )?;
        for (cap, name) in REQUIRED_CAPS {
            ensure!(
                kvm.check_extension(cap),
                "this KVM lacks {name}, which vmmctl needs"
            );
        }
        Ok(Self { kvm })
    }

    /// What `vmmctl info --hypervisor kvm` prints.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "KVM API version    {}", self.kvm.get_api_version());
        let _ = writeln!(
            s,
            "vCPUs              {} recommended, {} maximum",
            self.kvm.get_nr_vcpus(),
            self.kvm.get_max_vcpus()
        );
        let optional = [
            (Cap::TscDeadlineTimer, "tsc-deadline-timer"),
            (Cap::SplitIrqchip, "split-irqchip"),
            (Cap::ExtCpuid, "ext-cpuid"),
        ];
        let caps: Vec<_> = optional
            .iter()
            .filter(|(c, _)| self.kvm.check_extension(*c))
            .map(|(_, n)| *n)
            .collect();
        let _ = writeln!(s, "optional caps      {}", caps.join(" "));
        s
    }
}

impl Hypervisor for Kvm {
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .context("KVM_GET_SUPPORTED_CPUID")?;
        Ok(cpuid
            .as_slice()
            .iter()
            .map(|e| CpuidEntry {
                function: e.function,
                index: e.index,
                indexed: e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            })
            .collect())
    }

    fn create_vm(&self) -> Result<Box<dyn Vm>> {
        let fd = self.kvm.create_vm().context("KVM_CREATE_VM")?;
        fd.set_tss_address(TSS_ADDRESS)
            .context("KVM_SET_TSS_ADDR")?;
        fd.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        // The dummy speaker port (0x61) keeps Linux's PIT calibration, which
        // polls it, in the kernel.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).context("KVM_CREATE_PIT2")?;
        Ok(Box::new(KvmVm { fd, memory: None }))
    }
}

struct KvmVm {
    fd: VmFd,
    /// Held so the mapping outlives the memslots that point into it.
    memory: Option<Arc<GuestMemoryMmap>>,
}

impl Vm for KvmVm {
    fn set_memory(&mut self, memory: Arc<GuestMemoryMmap>) -> Result<()> {
        ensure!(self.memory.is_none(), "guest memory is already set");
        for (slot, region) in memory.iter().enumerate() {
            let host = memory
                .get_host_address(region.start_addr())
                .context("guest memory region has no host mapping")?;
            let slot_region = kvm_userspace_memory_region {
                slot: u32::try_from(slot)?,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes,
            // and `self.memory` keeps it mapped as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(slot_region) }
                .with_context(|| format!("KVM_SET_USER_MEMORY_REGION (slot {slot})"))?;
        }
        self.memory = Some(memory);
        Ok(())
    }

    /// KVM_CREATE_IRQCHIP gave it all of them.
    fn irqchip(&self) -> Irqchip {
        Irqchip::Full
    }

    fn connect_irq(&self, event: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(event, gsi)
            .with_context(|| format!("KVM_IRQFD (GSI {gsi})"))
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>> {
        let mut fd = self
            .fd
            .create_vcpu(u64::from(id))
            .with_context(|| format!("KVM_CREATE_VCPU {id}"))?;
        wire_lapic_lints(&fd).with_context(|| format!("vCPU {id}: local APIC LINT0/LINT1"))?;
        let immediate_exit = NonNull::from(&mut fd.get_kvm_run().immediate_exit);
        Ok(Box::new(KvmVcpu { fd, immediate_exit }))
    }

    fn stats_fd(&self) -> Result<File> {
        stats_fd(&self.fd).context("KVM_GET_STATS_FD on the VM")
    }

    fn stats_include_vcpus(&self) -> bool {
        false
    }
}

/// `KVM_GET_STATS_FD` = `_IO(KVMIO, 0xce)` (kvm-ioctls has no call for it),
/// on a VM or vCPU fd.
fn stats_fd(fd: &impl AsRawFd) -> std::io::Result<File> {
    const KVM_GET_STATS_FD: libc::c_ulong = 0xae << 8 | 0xce;
    // SAFETY: an _IO command without argument on a fd we own; the kernel
    // returns a new fd or an error.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new fd to us.
    Ok(unsafe { File::from_raw_fd(ret) })
}

/// What a PC BIOS does: LINT0 takes the 8259's interrupts (ExtINT) and
/// LINT1 the NMI line. Without it a guest that boots through the PIC
/// never sees a timer interrupt.
fn wire_lapic_lints(fd: &VcpuFd) -> Result<()> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const DELIVERY_MODE: u32 = 0x700;
    const EXTINT: u32 = 0x700;
    const NMI: u32 = 0x400;
    let mut lapic = fd.get_lapic().context("KVM_GET_LAPIC")?;
    for (reg, mode) in [(LVT_LINT0, EXTINT), (LVT_LINT1, NMI)] {
        // The register page is `c_char`s; the APIC's registers are u32.
        let bytes = &mut lapic.regs[reg..reg + 4];
        let mut raw = [0u8; 4];
        for (r, b) in raw.iter_mut().zip(bytes.iter()) {
            *r = *b as u8;
        }
        let value = (u32::from_le_bytes(raw) & !DELIVERY_MODE) | mode;
        for (b, r) in bytes.iter_mut().zip(value.to_le_bytes()) {
            *b = r as _;
        }
    }
    fd.set_lapic(&lapic).context("KVM_SET_LAPIC")
}

struct KvmVcpu {
    fd: VcpuFd,
    /// `kvm_run.immediate_exit` in the vCPU's mmap'd run area: it stays at
    /// one address for the vCPU's life, wherever `fd` moves.
    immediate_exit: NonNull<u8>,
}

// SAFETY: `immediate_exit` points into the vCPU's own run area, which is
// owned by `fd` (itself Send) and freed only with it; moving both to another
// thread together keeps the pointer valid.
unsafe impl Send for KvmVcpu {}

fn kvm_segment(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.kind,
        present: u8::from(s.present),
        dpl: s.dpl,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.l),
        g: u8::from(s.g),
        avl: 0,
        unusable: u8::from(!s.present),
        padding: 0,
    }
}

impl Vcpu for KvmVcpu {
    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()> {
        let entries: Vec<_> = entries
            .iter()
            .map(|e| kvm_cpuid_entry2 {
                function: e.function,
                index: e.index,
                flags: if e.indexed {
                    KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                } else {
                    0
                },
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
                ..Default::default()
            })
            .collect();
        let cpuid = CpuId::from_entries(&entries)
            .map_err(|e| anyhow::anyhow!("{} CPUID entries: {e:?}", entries.len()))?;
        self.fd.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")
    }

    fn set_msrs(&mut self, msrs: &[(u32, u64)]) -> Result<()> {
        let entries: Vec<_> = msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries)
            .map_err(|e| anyhow::anyhow!("{} MSRs: {e:?}", entries.len()))?;
        let set = self.fd.set_msrs(&list).context("KVM_SET_MSRS")?;
        if set < msrs.len() {
            bail!(
                "KVM_SET_MSRS refused MSR {:#x} (set {set} of {})",
                msrs[set].0,
                msrs.len()
            );
        }
        Ok(())
    }

    fn set_cpu_state(&mut self, st: &CpuState) -> Result<()> {
        let mut regs = self.fd.get_regs().context("KVM_GET_REGS")?;
        regs.rax = st.rax;
        regs.rbx = st.rbx;
        regs.rsi = st.rsi;
        regs.rsp = st.rsp;
        regs.rbp = st.rbp;
        regs.rip = st.rip;
        regs.rflags = st.rflags;
        self.fd.set_regs(&regs).context("KVM_SET_REGS")?;

        let mut sregs = self.fd.get_sregs().context("KVM_GET_SREGS")?;
        sregs.cs = kvm_segment(&st.cs);
        sregs.ds = kvm_segment(&st.ds);
        sregs.es = kvm_segment(&st.es);
        sregs.fs = kvm_segment(&st.fs);
        sregs.gs = kvm_segment(&st.gs);
        sregs.ss = kvm_segment(&st.ss);
        sregs.tr = kvm_segment(&st.tr);
        sregs.gdt.base = st.gdt.base;
        sregs.gdt.limit = st.gdt.limit;
        sregs.idt.base = st.idt.base;
        sregs.idt.limit = st.idt.limit;
        sregs.cr0 = st.cr0;
        sregs.cr3 = st.cr3;
        sregs.cr4 = st.cr4;
        sregs.efer = st.efer;
        self.fd.set_sregs(&sregs).context("KVM_SET_SREGS")?;

        // The x87 and SSE control words as after FNINIT/reset.
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).context("KVM_SET_FPU")
    }

    fn run(&mut self) -> Result<VmExit<'_>> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // SAFETY: see the field; only this thread and the kick
                // handler running on it touch the byte.
                unsafe { self.immediate_exit.as_ptr().write_volatile(0) };
                return Ok(VmExit::Interrupted);
            }
            Err(e) => return Err(e).context("KVM_RUN"),
        };
        Ok(match exit {
            VcpuExit::IoIn(port, data) => VmExit::IoIn { port, data },
            VcpuExit::IoOut(port, data) => VmExit::IoOut { port, data },
            VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
            VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
            VcpuExit::Hlt => VmExit::Halt,
            VcpuExit::Shutdown => VmExit::Shutdown,
            VcpuExit::FailEntry(reason, _cpu) => VmExit::FailEntry(reason),
            // kvm-ioctls hands out no details.
            VcpuExit::InternalError => VmExit::InternalError(InternalError::Unknown(None)),
            VcpuExit::Intr => VmExit::Interrupted,
            VcpuExit::SystemEvent(..) => VmExit::Other("system-event"),
            VcpuExit::IoapicEoi(vector) => VmExit::IoapicEoi(vector),
            VcpuExit::Hypercall(_) => VmExit::Other("hypercall"),
            VcpuExit::Debug(_) => VmExit::Other("debug"),
            VcpuExit::Exception => VmExit::Other("exception"),
            _ => VmExit::Other("other"),
        })
    }

    fn stats_fd(&self) -> Result<File> {
        stats_fd(&self.fd).context("KVM_GET_STATS_FD on the vCPU")
    }

    fn immediate_exit(&mut self) -> NonNull<u8> {
        self.immediate_exit
    }
}
