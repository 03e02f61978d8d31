//! The hypervisor seam: what vmmctl needs from a VM, a vCPU and its exits,
//! in plain Rust types. Backends (`kvm`, `rvmx`) translate these to their
//! own ABI; nothing outside a backend's file sees its types.

mod kvm;
mod rvmx;

use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use anyhow::Result;
use clap::ValueEnum;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use kvm::Kvm;
pub use rvmx::Rvmx;

/// Which backend runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Linux KVM through /dev/kvm.
    Kvm,
    /// The rvmx kernel module through /dev/rvmx.
    Rvmx,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kvm => "kvm",
            Backend::Rvmx => "rvmx",
        })
    }
}

impl Backend {
    /// The default for `run`: rvmx where its device exists (rvmx is what
    /// this project is for), else KVM where /dev/kvm exists, else rvmx
    /// again, whose open then says how to load it.
    pub fn default_for(rvmx_device: &Path, kvm_device: &Path) -> Backend {
        if !rvmx_device.exists() && kvm_device.exists() {
            Backend::Kvm
        } else {
            Backend::Rvmx
        }
    }

    /// Opens the backend's device.
    pub fn open(self) -> Result<Box<dyn Hypervisor>> {
        Ok(match self {
            Backend::Kvm => Box::new(Kvm::open()?),
            Backend::Rvmx => Box::new(Rvmx::open(Path::new(uapi::DEVICE_PATH))?),
        })
    }
}

/// One CPUID leaf/subleaf as the guest will see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// True where `index` selects a subleaf (leaf 4, 7, 0xb, 0xd, ...).
    pub indexed: bool,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// A segment register as VMX holds it (hidden part included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// Descriptor type (4 bits): e.g. 0xb execute/read accessed code, 0x3
    /// read/write accessed data, 0xb busy TSS for a system segment.
    pub kind: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size 32 bit.
    pub db: bool,
    /// Code/data (true) or system segment (false).
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Limit in 4 KiB units.
    pub g: bool,
}

/// GDTR/IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// The registers a boot protocol sets on the boot vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    pub rax: u64,
    pub rbx: u64,
    pub rsi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// Delivers message-signalled interrupts to the VM's local APICs: how an
/// interrupt controller outside the hypervisor reaches the guest.
pub trait MsiSink: Send + Sync {
    /// Sends the interrupt that a write of `data` to `address` (0xFEExxxxx)
    /// raises on the system bus; returns how many local APICs accepted it.
    fn signal_msi(&self, address: u64, data: u32) -> io::Result<u32>;
}

/// Which interrupt controllers the hypervisor emulates itself.
pub enum Irqchip {
    /// All of a PC's: 8259 PICs, I/O APIC, local APICs (and a PIT). A
    /// device's line is a GSI, wired to an eventfd by `Vm::connect_irq`.
    Full,
    /// Only the local APICs (KVM's split irqchip). There is no PIC or PIT;
    /// vmmctl emulates the I/O APIC (`devices::ioapic`), which sends its
    /// interrupts to this sink and learns of the guest's EOIs of
    /// level-triggered vectors from `VmExit::IoapicEoi`.
    Split(Arc<dyn MsiSink>),
}

/// What the hypervisor says with an internal error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InternalError {
    /// It could not emulate an instruction; what it knows about it.
    Emulation {
        rip: Option<u64>,
        /// The guest-physical address the instruction accessed.
        address: Option<u64>,
        /// The first 8 bytes at RIP.
        bytes: Option<[u8; 8]>,
    },
    /// An event (interrupt, exception) whose delivery it could not finish:
    /// the IDT-vectoring information and the guest RIP.
    EventDelivery {
        vectoring: Option<u64>,
        rip: Option<u64>,
    },
    /// An exit it does not handle: the VMX basic exit reason.
    UnhandledExit(Option<u64>),
    /// No details (KVM through kvm-ioctls), or a suberror vmmctl does not
    /// know.
    Unknown(Option<u32>),
}

/// Why `Vcpu::run` returned to userspace.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// `in` from a port: fill `data` (1, 2 or 4 bytes).
    IoIn { port: u16, data: &'a mut [u8] },
    /// `out` to a port.
    IoOut { port: u16, data: &'a [u8] },
    /// A load from guest-physical `addr`, which no memory backs: fill
    /// `data`.
    MmioRead { addr: u64, data: &'a mut [u8] },
    /// A store to guest-physical `addr`, which no memory backs.
    MmioWrite { addr: u64, data: &'a [u8] },
    /// The guest EOI'd `vector`, which was delivered level-triggered
    /// (`Irqchip::Split` only).
    IoapicEoi(u8),
    /// HLT with no interrupt able to wake the vCPU (KVM without its
    /// irqchip; never with one).
    Halt,
    /// The guest triple-faulted.
    Shutdown,
    /// The run was interrupted by a kick (signal/immediate exit).
    Interrupted,
    /// VM entry failed; the hardware reason code.
    FailEntry(u64),
    /// The hypervisor could not emulate an instruction or event.
    InternalError(InternalError),
    /// Any other exit, by the backend's name for it.
    Other(&'static str),
}

impl VmExit<'_> {
    /// A short stable name, used as the key of exit statistics.
    pub fn name(&self) -> &'static str {
        match self {
            VmExit::IoIn { .. } => "io-in",
            VmExit::IoOut { .. } => "io-out",
            VmExit::MmioRead { .. } => "mmio-read",
            VmExit::MmioWrite { .. } => "mmio-write",
            VmExit::IoapicEoi(_) => "ioapic-eoi",
            VmExit::Halt => "hlt",
            VmExit::Shutdown => "shutdown",
            VmExit::Interrupted => "interrupted",
            VmExit::FailEntry(_) => "fail-entry",
            VmExit::InternalError(_) => "internal-error",
            VmExit::Other(name) => name,
        }
    }
}

/// A hypervisor device (/dev/kvm, /dev/rvmx).
pub trait Hypervisor {
    /// The CPUID leaves the hypervisor can present to a guest.
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>>;
    /// A VM with the hypervisor's interrupt controllers (see
    /// `Vm::irqchip`), ready for memory and vCPUs.
    fn create_vm(&self) -> Result<Box<dyn Vm>>;
}

/// A VM: its memory, interrupt lines and vCPUs.
pub trait Vm: Send + Sync {
    /// Backs guest physical memory with `memory`; the VM keeps it alive.
    fn set_memory(&mut self, memory: Arc<GuestMemoryMmap>) -> Result<()>;
    /// Where device interrupts go.
    fn irqchip(&self) -> Irqchip;
    /// Every write to `event` raises (edge) interrupt line `gsi` of the
    /// hypervisor's I/O APIC (`Irqchip::Full` only).
    fn connect_irq(&self, event: &EventFd, gsi: u32) -> Result<()>;
    /// vCPU `id` (its APIC ID). vCPU 0 boots; the others wait for SIPI.
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>>;
    /// The VM's binary statistics file (KVM's `KVM_GET_STATS_FD` format,
    /// which rvmx shares; `uapi::stats` decodes it).
    fn stats_fd(&self) -> Result<File>;
    /// Whether the VM's statistics already hold the sums of its vCPUs'
    /// (rvmx); else (KVM) they are the VM's own and the vCPUs' files add
    /// theirs.
    fn stats_include_vcpus(&self) -> bool;
}

/// One virtual CPU. Runs on its own thread.
pub trait Vcpu: Send {
    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()>;
    fn set_msrs(&mut self, msrs: &[(u32, u64)]) -> Result<()>;
    /// Registers for the boot protocol's entry point (boot vCPU only).
    fn set_cpu_state(&mut self, state: &CpuState) -> Result<()>;
    /// Enters the guest until something needs userspace.
    fn run(&mut self) -> Result<VmExit<'_>>;
    /// The vCPU's binary statistics file (see `Vm::stats_fd`).
    fn stats_fd(&self) -> Result<File>;
    /// The byte the hypervisor checks before entering the guest: non-zero
    /// makes `run` return `Interrupted` at once. Valid while the vCPU
    /// lives; a signal handler on this vCPU's thread sets it to kick it.
    fn immediate_exit(&mut self) -> NonNull<u8>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_prefers_rvmx_then_kvm() {
        let here = Path::new("/");
        let nowhere = Path::new("/nonexistent/device");
        assert_eq!(Backend::default_for(here, here), Backend::Rvmx);
        assert_eq!(Backend::default_for(nowhere, here), Backend::Kvm);
        assert_eq!(Backend::default_for(here, nowhere), Backend::Rvmx);
        assert_eq!(Backend::default_for(nowhere, nowhere), Backend::Rvmx);
    }
}
