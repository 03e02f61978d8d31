// SPDX-License-Identifier: GPL-2.0

//! A VM: its memory, its vCPUs' shared settings, and the ioctls of a VM fd.

use core::ffi::{c_int, c_void};

use kernel::{
    current,
    mm::Mm,
    new_mutex,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{Atomic, Full, Relaxed},
        Arc, ArcBorrow, Mutex,
    },
};

use crate::{
    anon_file::{self, AnonFile},
    ioctl,
    lapic::delivery::{DeliveryMode, Message, Shorthand},
    mem::{Memory, Unmapped},
    stats::{self, VmStats, M},
    uapi,
    vcpu::{apicv::VmApicPages, mailbox::Mailbox, Vcpu},
    vmx::{controls::Controls, host::VmxHost},
};

extern "C" {
    fn rvmx_on_cpus_where(
        cond: unsafe extern "C" fn(c_int, *mut c_void) -> bool,
        func: unsafe extern "C" fn(*mut c_void),
        info: *mut c_void,
    );
}

const VM_IOCTLS: [u32; 5] = [
    uapi::RVMX_SET_USER_MEMORY_REGION,
    uapi::RVMX_CREATE_VCPU,
    uapi::RVMX_SET_USER_MSR_EXITS,
    uapi::RVMX_SIGNAL_MSI,
    uapi::RVMX_GET_VM_STATS_FD,
];

#[pin_data]
pub(crate) struct Vm {
    pub(crate) host: Arc<VmxHost>,
    pub(crate) controls: Controls,
    /// The `mm` of the process that created the VM: VM and vCPU ioctls from
    /// any other process fail with EIO, as in KVM. Held (mmgrab), so its
    /// address cannot be another process's while the VM lives.
    mm: ARef<Mm>,
    pub(crate) eptp: u64,
    /// The APIC-access page and MSR bitmap, where the VM uses APIC
    /// virtualization (`vcpu::apicv`).
    pub(crate) apic_pages: Option<VmApicPages>,
    /// Bumped after each change that removes or narrows guest mappings;
    /// a vCPU whose last flush is older runs INVEPT before entering.
    pub(crate) ept_generation: Atomic<u64>,
    /// Guest memory. Lock order: a vCPU's state lock, then this.
    #[pin]
    pub(crate) mem: Mutex<Memory>,
    /// Whether accesses to MSRs rvmx does not virtualize exit to user space
    /// (`RVMX_SET_USER_MSR_EXITS`) instead of raising #GP.
    user_msr_exits: Atomic<u32>,
    /// vCPU ids in use (bit per id).
    #[pin]
    vcpu_ids: Mutex<u32>,
    /// Guest TSC = host TSC + this (wrapping): the guest's TSC starts at 0
    /// when the VM is made, as on KVM, and is the same on every vCPU.
    pub(crate) tsc_offset: u64,
    /// One per possible vCPU id, made with the VM and never replaced, so a
    /// sender (another vCPU, with interrupts off) finds its destinations
    /// without a lock.
    mailboxes: KVec<Arc<Mailbox>>,
    /// The VM's and its vCPUs' counters (`stats`), shared with stats files.
    pub(crate) stats: Arc<VmStats>,
}

/// The calling process's address space, if it has one.
fn current_mm() -> Option<*mut kernel::bindings::mm_struct> {
    current!().mm().map(|mm| mm.as_raw())
}

impl Vm {
    pub(crate) fn create(host: Arc<VmxHost>) -> Result<Arc<Self>> {
        let controls = host.controls().map_err(|u| {
            // Once: the answer is the same for every VM a user tries.
            kernel::pr_err_once!(
                "the CPU cannot set the {} controls {:#x} rvmx needs\n",
                u.word,
                u.bits
            );
            ENODEV
        })?;
        // A VM belongs to a process: a kernel thread (no mm) cannot make one.
        let mm: ARef<Mm> = current!().mm().map(|mm| ARef::from(&**mm)).ok_or(EINVAL)?;
        let mut memory = Memory::new()?;
        let eptp = memory.ept.eptp();
        let apic_pages = if controls.apicv {
            let pages = VmApicPages::new()?;
            memory.map_private(crate::lapic::DEFAULT_BASE, pages.access_phys())?;
            Some(pages)
        } else {
            None
        };
        let mut mailboxes = KVec::with_capacity(uapi::RVMX_MAX_VCPUS as usize, GFP_KERNEL)?;
        for _ in 0..uapi::RVMX_MAX_VCPUS {
            mailboxes.push(Mailbox::new()?, GFP_KERNEL)?;
        }
        let stats = VmStats::new()?;
        Arc::pin_init(
            try_pin_init!(Self {
                host,
                controls,
                mm,
                eptp,
                apic_pages,
                ept_generation: Atomic::new(0),
                user_msr_exits: Atomic::new(0),
                mem <- new_mutex!(memory),
                vcpu_ids <- new_mutex!(0),
                mailboxes,
                stats,
                tsc_offset: 0u64.wrapping_sub(crate::vmx::instr::rdtsc()),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// EIO unless the caller is the process that created the VM.
    pub(crate) fn check_owner(&self) -> Result {
        if current_mm() == Some(self.mm.as_raw()) {
            Ok(())
        } else {
            Err(EIO)
        }
    }

    fn set_user_memory_region(&self, arg: usize) -> Result<isize> {
        let req: uapi::rvmx_userspace_memory_region = ioctl::read_arg(arg)?;
        let (result, unmapped) = self.mem.lock().set_region(&req);
        self.flush_unmapped(unmapped);
        if result.is_ok() {
            self.stats.add(M::MemoryRegionChanges, 1);
        }
        result.map(|()| 0)
    }

    /// Makes sure no vCPU can still reach `unmapped` pages through a cached
    /// translation, then unpins them.
    fn flush_unmapped(&self, unmapped: Unmapped) {
        let Some(pages) = unmapped else { return };
        self.stats.add(M::RemoteEptFlushes, 1);
        let _ = self.ept_generation.fetch_add(1, Full);
        // A vCPU in its window on a CPU exits on this IPI (external-
        // interrupt exiting) and takes it only after the window ended; its
        // next window sees the new generation and runs INVEPT first. A
        // window that opens after the bump reads the new generation. So
        // waiting for the CPUs whose windows run this VM's vCPUs, and only
        // those, waits for every stale translation.
        unsafe extern "C" fn nothing(_: *mut c_void) {}
        unsafe extern "C" fn runs_this_vm(cpu: c_int, info: *mut c_void) -> bool {
            // SAFETY: `info` is the `&Vm` passed below, alive during the
            // call, which waits for every CPU.
            let vm = unsafe { &*info.cast::<Vm>() };
            vm.mailboxes
                .iter()
                .any(|mb| mb.window_cpu() == u32::try_from(cpu).ok())
        }
        // SAFETY: both callbacks only read `self` through `info`, and the
        // call waits until they have run on every selected CPU.
        unsafe {
            rvmx_on_cpus_where(
                runs_this_vm,
                nothing,
                (self as *const Self).cast_mut().cast(),
            )
        };
        drop(pages);
    }

    fn create_vcpu(this: ArcBorrow<'_, Self>, id: usize) -> Result<isize> {
        let id = u32::try_from(id).map_err(|_| EINVAL)?;
        if id >= uapi::RVMX_MAX_VCPUS {
            return Err(EINVAL);
        }
        {
            let mut ids = this.vcpu_ids.lock();
            if *ids & (1 << id) != 0 {
                return Err(EEXIST);
            }
            *ids |= 1 << id;
        }
        let vm: Arc<Self> = this.into();
        let vcpu = match Vcpu::create(vm.clone(), id) {
            Ok(vcpu) => vcpu,
            Err(e) => {
                *vm.vcpu_ids.lock() &= !(1 << id);
                return Err(e);
            }
        };
        vcpu.mailbox().set_present(true);
        // If installing fails, the vCPU's drop frees its id (and VPID):
        // freeing it here as well could free the id of a vCPU made since.
        Ok(anon_file::install(vcpu)? as isize)
    }

    /// vCPU `id`'s mailbox (`id` < `RVMX_MAX_VCPUS`, checked at creation).
    pub(crate) fn mailbox(&self, id: u32) -> &Mailbox {
        &self.mailboxes[id as usize]
    }

    /// Delivers an interrupt message to the local APICs it selects; `from`
    /// is the sending vCPU (`None`: the VMM). Returns how many accepted it.
    /// Callable with interrupts off (a vCPU's ICR write in its window).
    pub(crate) fn deliver(&self, from: Option<u32>, m: &Message) -> u32 {
        let mut accepted = 0;
        for (id, mb) in (0u32..).zip(self.mailboxes.iter()) {
            if !mb.present() {
                continue;
            }
            let is_self = from == Some(id);
            let target = mb.target(id);
            let fixed = matches!(m.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority);
            // A disabled local APIC drops fixed interrupts: it must not
            // count as accepting one, nor win lowest-priority arbitration.
            if fixed && !target.enabled {
                continue;
            }
            let selected = match m.shorthand {
                Shorthand::None => target.matches(m),
                Shorthand::SelfOnly => is_self,
                Shorthand::AllIncludingSelf => true,
                Shorthand::AllExcludingSelf => !is_self,
            };
            if !selected {
                continue;
            }
            match m.mode {
                DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                    mb.post_fixed(m.vector, m.level_triggered)
                }
                DeliveryMode::Nmi => mb.post_nmi(),
                // INIT level de-assert only synchronizes arbitration IDs.
                DeliveryMode::Init if m.level_triggered && !m.assert => continue,
                DeliveryMode::Init => mb.post_init(),
                DeliveryMode::Startup => mb.post_sipi(m.vector),
                // No SMM, and no 8259 to supply an ExtINT vector.
                DeliveryMode::Smi | DeliveryMode::ExtInt => continue,
            }
            accepted += 1;
            if from.is_some() {
                self.stats.ipi_received(id);
            }
            // Lowest priority: one recipient; the first match is as good as
            // any when every vCPU runs at the same priority.
            if m.mode == DeliveryMode::LowestPriority {
                break;
            }
        }
        accepted
    }

    fn signal_msi(&self, arg: usize) -> Result<isize> {
        let msi: uapi::rvmx_msi = ioctl::read_arg(arg)?;
        if msi.flags != 0 || msi.pad != [0; 16] {
            return Err(EINVAL);
        }
        let address = (u64::from(msi.address_hi) << 32) | u64::from(msi.address_lo);
        let m = Message::from_msi(address, msi.data).ok_or(EINVAL)?;
        let accepted = self.deliver(None, &m);
        self.stats.add(M::MsiSignalled, 1);
        self.stats.add(M::MsiAccepted, u64::from(accepted));
        Ok(accepted as isize)
    }

    pub(crate) fn user_msr_exits(&self) -> bool {
        self.user_msr_exits.load(Relaxed) != 0
    }

    fn set_user_msr_exits(&self, reasons: usize) -> Result<isize> {
        let unknown = uapi::RVMX_MSR_EXIT_REASON_UNKNOWN as usize;
        if reasons & !unknown != 0 {
            return Err(EINVAL);
        }
        self.user_msr_exits.store(u32::from(reasons != 0), Relaxed);
        Ok(0)
    }

    /// Frees a vCPU id when its vCPU goes.
    pub(crate) fn release_vcpu_id(&self, id: u32) {
        *self.vcpu_ids.lock() &= !(1 << id);
    }
}

#[vtable]
impl AnonFile for Vm {
    const NAME: &'static CStr = c"rvmx-vm";

    fn ioctl(this: ArcBorrow<'_, Self>, cmd: u32, arg: usize) -> Result<isize> {
        this.check_owner()?;
        match cmd {
            uapi::RVMX_SET_USER_MEMORY_REGION => this.set_user_memory_region(arg),
            uapi::RVMX_CREATE_VCPU => Self::create_vcpu(this, arg),
            uapi::RVMX_SET_USER_MSR_EXITS => this.set_user_msr_exits(arg),
            uapi::RVMX_SIGNAL_MSI => this.signal_msi(arg),
            uapi::RVMX_GET_VM_STATS_FD => stats::vm_fd(&this.stats, arg),
            _ => Err(ioctl::unknown(cmd, &VM_IOCTLS)),
        }
    }
}
