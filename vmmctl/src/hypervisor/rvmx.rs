//! The rvmx backend (/dev/rvmx), through the `uapi` crate.
//!
//! rvmx has KVM's split irqchip: the local APICs (and their timers) are in
//! the kernel, the I/O APIC is vmmctl's. Device interrupts therefore reach
//! the guest as MSIs (`RVMX_SIGNAL_MSI`) sent by vmmctl's I/O APIC, whose
//! MMIO window exits here like any MMIO; the guest's EOI of a
//! level-triggered vector comes back as `RVMX_EXIT_IOAPIC_EOI`. HLT, IPIs
//! and INIT/SIPI stay in the kernel: vCPUs other than 0 are created and
//! run, and sleep inside `RVMX_RUN` until the boot vCPU starts them.

use std::fs::File;
use std::io;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use uapi::{sys, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{
    CpuState, CpuidEntry, Hypervisor, InternalError, Irqchip, MsiSink, Segment, Vcpu, Vm, VmExit,
};

pub struct Rvmx {
    dev: uapi::Rvmx,
}

impl Rvmx {
    pub fn open(device: &Path) -> Result<Self> {
        let dev = uapi::Rvmx::open(device).with_context(|| {
            format!(
                "cannot open {} for --hypervisor rvmx: is rvmx loaded (modprobe rvmx)?",
                device.display()
            )
        })?;
        let version = dev.api_version().context("RVMX_GET_API_VERSION")?;
        if version != sys::RVMX_API_VERSION {
            bail!(
                "rvmx API version {version}, vmmctl speaks {}: rebuild vmmctl against this rvmx",
                sys::RVMX_API_VERSION
            );
        }
        Ok(Self { dev })
    }
}

impl Hypervisor for Rvmx {
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let entries = self
            .dev
            .supported_cpuid()
            .context("RVMX_GET_SUPPORTED_CPUID")?;
        Ok(entries
            .iter()
            .map(|e| CpuidEntry {
                function: e.function,
                index: e.index,
                indexed: e.flags & sys::RVMX_CPUID_FLAG_SIGNIFICANT_INDEX != 0,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
            })
            .collect())
    }

    fn create_vm(&self) -> Result<Box<dyn Vm>> {
        let fd = self
            .dev
            .create_vm()
            .context("RVMX_CREATE_VM (EBUSY: kvm_intel holds VMX, rmmod kvm_intel first)")?;
        Ok(Box::new(RvmxVm {
            fd: Arc::new(fd),
            memory: None,
        }))
    }
}

struct RvmxVm {
    /// Shared with vmmctl's I/O APIC, which sends MSIs on it.
    fd: Arc<VmFd>,
    /// Kept alive while the VM may touch it.
    memory: Option<Arc<GuestMemoryMmap>>,
}

impl MsiSink for VmFd {
    fn signal_msi(&self, address: u64, data: u32) -> io::Result<u32> {
        VmFd::signal_msi(self, address, data)
    }
}

impl Vm for RvmxVm {
    fn set_memory(&mut self, memory: Arc<GuestMemoryMmap>) -> Result<()> {
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .context("guest memory region without a host mapping")?;
            let r = sys::rvmx_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region stays mapped while `self.memory` holds it,
            // which is as long as the VM, and only the guest uses it.
            unsafe { self.fd.set_user_memory_region(r) }
                .with_context(|| format!("RVMX_SET_USER_MEMORY_REGION slot {slot}"))?;
        }
        self.memory = Some(memory);
        Ok(())
    }

    fn irqchip(&self) -> Irqchip {
        Irqchip::Split(self.fd.clone())
    }

    fn connect_irq(&self, _event: &EventFd, gsi: u32) -> Result<()> {
        bail!("rvmx has no I/O APIC of its own to wire GSI {gsi} to: vmmctl's I/O APIC drives it")
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>> {
        if u32::from(id) >= sys::RVMX_MAX_VCPUS {
            bail!(
                "rvmx runs at most {} vCPUs per VM: use --cpus {} or fewer",
                sys::RVMX_MAX_VCPUS,
                sys::RVMX_MAX_VCPUS
            );
        }
        let mut fd = self
            .fd
            .create_vcpu(u32::from(id))
            .with_context(|| format!("RVMX_CREATE_VCPU {id}"))?;
        let immediate_exit = NonNull::from(&mut fd.run_area().immediate_exit);
        Ok(Box::new(RvmxVcpu { fd, immediate_exit }))
    }

    fn stats_fd(&self) -> Result<File> {
        self.fd.stats_fd().context("RVMX_GET_VM_STATS_FD")
    }

    fn stats_include_vcpus(&self) -> bool {
        true
    }
}

struct RvmxVcpu {
    fd: VcpuFd,
    /// `rvmx_run.immediate_exit` in the vCPU's mapped run area, at one
    /// address for the vCPU's life.
    immediate_exit: NonNull<u8>,
}

// SAFETY: `immediate_exit` points into the run area that `fd` maps and
// unmaps; they move between threads together.
unsafe impl Send for RvmxVcpu {}

fn rvmx_segment(s: &Segment) -> sys::rvmx_segment {
    sys::rvmx_segment {
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

impl Vcpu for RvmxVcpu {
    fn set_cpuid(&mut self, entries: &[CpuidEntry]) -> Result<()> {
        let entries: Vec<_> = entries
            .iter()
            .map(|e| sys::rvmx_cpuid_entry {
                function: e.function,
                index: e.index,
                flags: if e.indexed {
                    sys::RVMX_CPUID_FLAG_SIGNIFICANT_INDEX
                } else {
                    0
                },
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
                padding: [0; 3],
            })
            .collect();
        self.fd.set_cpuid(&entries).context("RVMX_SET_CPUID")
    }

    /// Sets the boot MSRs rvmx virtualizes; the others (e.g. IA32_TSC) are
    /// left at rvmx's values rather than failing the boot.
    fn set_msrs(&mut self, msrs: &[(u32, u64)]) -> Result<()> {
        for &(index, data) in msrs {
            let e = sys::rvmx_msr_entry {
                index,
                reserved: 0,
                data,
            };
            self.fd
                .set_msrs(&[e])
                .with_context(|| format!("RVMX_SET_MSRS {index:#x}"))?;
        }
        Ok(())
    }

    fn set_cpu_state(&mut self, st: &CpuState) -> Result<()> {
        let mut regs = self.fd.regs().context("RVMX_GET_REGS")?;
        regs.rax = st.rax;
        regs.rbx = st.rbx;
        regs.rsi = st.rsi;
        regs.rsp = st.rsp;
        regs.rbp = st.rbp;
        regs.rip = st.rip;
        regs.rflags = st.rflags;
        self.fd.set_regs(&regs).context("RVMX_SET_REGS")?;

        let mut s = self.fd.sregs().context("RVMX_GET_SREGS")?;
        s.cs = rvmx_segment(&st.cs);
        s.ds = rvmx_segment(&st.ds);
        s.es = rvmx_segment(&st.es);
        s.fs = rvmx_segment(&st.fs);
        s.gs = rvmx_segment(&st.gs);
        s.ss = rvmx_segment(&st.ss);
        s.tr = rvmx_segment(&st.tr);
        (s.gdt.base, s.gdt.limit) = (st.gdt.base, st.gdt.limit);
        (s.idt.base, s.idt.limit) = (st.idt.base, st.idt.limit);
        (s.cr0, s.cr3, s.cr4, s.efer) = (st.cr0, st.cr3, st.cr4, st.efer);
        // rvmx's vCPUs start with FCW 0x37f and MXCSR 0x1f80 already.
        self.fd.set_sregs(&s).context("RVMX_SET_SREGS")
    }

    fn run(&mut self) -> Result<VmExit<'_>> {
        match self.fd.run() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                // SAFETY: see the field; only this thread and the kick
                // handler running on it touch the byte.
                unsafe { self.immediate_exit.as_ptr().write_volatile(0) };
                return Ok(VmExit::Interrupted);
            }
            Err(e) => return Err(e).context("RVMX_RUN"),
        }
        let reason = self.fd.run_area().exit_reason;
        Ok(match reason {
            sys::RVMX_EXIT_IO => {
                // SAFETY: the exit reason says the union holds `io`.
                let io = unsafe { self.fd.run_area().__bindgen_anon_1.io };
                if io.count != 1 {
                    return Ok(VmExit::Other("string-io"));
                }
                let data = self
                    .fd
                    .run_data(io.data_offset, usize::from(io.size))
                    .context("rvmx put the I/O data outside the run area")?;
                if io.direction == sys::RVMX_EXIT_IO_IN as u8 {
                    VmExit::IoIn {
                        port: io.port,
                        data,
                    }
                } else {
                    VmExit::IoOut {
                        port: io.port,
                        data,
                    }
                }
            }
            sys::RVMX_EXIT_MMIO => {
                let run = self.fd.run_area();
                // SAFETY: the exit reason says the union holds `mmio`.
                let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
                let addr = mmio.phys_addr;
                let len = (mmio.len as usize).min(mmio.data.len());
                if mmio.is_write != 0 {
                    VmExit::MmioWrite {
                        addr,
                        data: &mmio.data[..len],
                    }
                } else {
                    VmExit::MmioRead {
                        addr,
                        data: &mut mmio.data[..len],
                    }
                }
            }
            sys::RVMX_EXIT_IOAPIC_EOI => {
                let vector = self.fd.eoi_vector().context("EOI exit without a vector")?;
                VmExit::IoapicEoi(vector)
            }
            // An rvmx without its in-kernel local APIC (older than the
            // split irqchip) still reports HLT.
            sys::RVMX_EXIT_HLT => VmExit::Halt,
            sys::RVMX_EXIT_SHUTDOWN => VmExit::Shutdown,
            sys::RVMX_EXIT_INTR => VmExit::Interrupted,
            sys::RVMX_EXIT_FAIL_ENTRY => {
                // SAFETY: the exit reason says the union holds `fail_entry`.
                let f = unsafe { self.fd.run_area().__bindgen_anon_1.fail_entry };
                VmExit::FailEntry(f.hardware_entry_failure_reason)
            }
            sys::RVMX_EXIT_INTERNAL_ERROR => {
                let (suberror, data) = self
                    .fd
                    .internal_error()
                    .context("internal-error exit without its data")?;
                VmExit::InternalError(decode_internal_error(suberror, &data))
            }
            sys::RVMX_EXIT_HYPERCALL => VmExit::Other("hypercall"),
            _ => VmExit::Other("other"),
        })
    }

    fn stats_fd(&self) -> Result<File> {
        self.fd.stats_fd().context("RVMX_GET_VCPU_STATS_FD")
    }

    fn immediate_exit(&mut self) -> NonNull<u8> {
        self.immediate_exit
    }
}

/// rvmx's internal-error data in vmmctl's terms; `data` holds only the
/// words rvmx marked valid.
fn decode_internal_error(suberror: u32, data: &[u64]) -> InternalError {
    match suberror {
        sys::RVMX_INTERNAL_ERROR_EMULATION => InternalError::Emulation {
            rip: data.first().copied(),
            address: data.get(1).copied(),
            bytes: data.get(2).map(|w| w.to_le_bytes()),
        },
        sys::RVMX_INTERNAL_ERROR_DELIVERY_EV => InternalError::EventDelivery {
            vectoring: data.first().copied(),
            rip: data.get(2).copied(),
        },
        sys::RVMX_INTERNAL_ERROR_UNHANDLED_EXIT => {
            InternalError::UnhandledExit(data.first().copied())
        }
        other => InternalError::Unknown(Some(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_error_data_is_decoded_as_far_as_it_is_valid() {
        let bytes = u64::from_le_bytes([0x0f, 0x01, 0xd9, 0x90, 0x90, 0x90, 0x90, 0x90]);
        assert_eq!(
            decode_internal_error(
                sys::RVMX_INTERNAL_ERROR_EMULATION,
                &[0xffff_ffff_8100_0000, 0xfed0_0000, bytes]
            ),
            InternalError::Emulation {
                rip: Some(0xffff_ffff_8100_0000),
                address: Some(0xfed0_0000),
                bytes: Some([0x0f, 0x01, 0xd9, 0x90, 0x90, 0x90, 0x90, 0x90]),
            }
        );
        assert_eq!(
            decode_internal_error(sys::RVMX_INTERNAL_ERROR_EMULATION, &[0x1000]),
            InternalError::Emulation {
                rip: Some(0x1000),
                address: None,
                bytes: None,
            }
        );
        assert_eq!(
            decode_internal_error(sys::RVMX_INTERNAL_ERROR_UNHANDLED_EXIT, &[48, 0]),
            InternalError::UnhandledExit(Some(48))
        );
        assert_eq!(
            decode_internal_error(
                sys::RVMX_INTERNAL_ERROR_DELIVERY_EV,
                &[0x8000_0b0e, 0x182, 0x40_1000, 0xfee0_0000]
            ),
            InternalError::EventDelivery {
                vectoring: Some(0x8000_0b0e),
                rip: Some(0x40_1000),
            }
        );
        assert_eq!(
            decode_internal_error(9, &[]),
            InternalError::Unknown(Some(9))
        );
    }
}
