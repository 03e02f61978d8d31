// SPDX-License-Identifier: GPL-2.0

//! A VM: its memory, its vCPUs' shared settings, and the ioctls of a VM fd.

use kernel::{
    current, new_mutex,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc, ArcBorrow, Mutex,
    },
};

use crate::{
    anon_file::{self, AnonFile},
    ioctl,
    mem::{Memory, Unmapped},
    uapi,
    vcpu::Vcpu,
    vmx::{controls::Controls, host::VmxHost},
};

const VM_IOCTLS: [u32; 3] = [
    uapi::RVMX_SET_USER_MEMORY_REGION,
    uapi::RVMX_CREATE_VCPU,
    uapi::RVMX_SET_USER_MSR_EXITS,
];

#[pin_data]
pub(crate) struct Vm {
    pub(crate) host: Arc<VmxHost>,
    pub(crate) controls: Controls,
    /// The `mm` of the process that created the VM: VM and vCPU ioctls from
    /// any other process fail with EIO, as in KVM. Compared, never
    /// dereferenced.
    mm: usize,
    pub(crate) eptp: u64,
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
}

fn current_mm() -> usize {
    current!().mm().map_or(0, |mm| mm.as_raw() as usize)
}

impl Vm {
    pub(crate) fn create(host: Arc<VmxHost>) -> Result<Arc<Self>> {
        let controls = host.controls().map_err(|u| {
            pr_err!(
                "the CPU cannot set the {} controls {:#x} rvmx needs\n",
                u.word,
                u.bits
            );
            ENODEV
        })?;
        let memory = Memory::new()?;
        let eptp = memory.ept.eptp();
        Arc::pin_init(
            try_pin_init!(Self {
                host,
                controls,
                mm: current_mm(),
                eptp,
                ept_generation: Atomic::new(0),
                user_msr_exits: Atomic::new(0),
                mem <- new_mutex!(memory),
                vcpu_ids <- new_mutex!(0),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// EIO unless the caller is the process that created the VM.
    pub(crate) fn check_owner(&self) -> Result {
        if current_mm() == self.mm {
            Ok(())
        } else {
            Err(EIO)
        }
    }

    fn set_user_memory_region(&self, arg: usize) -> Result<isize> {
        let req: uapi::rvmx_userspace_memory_region = ioctl::read_arg(arg)?;
        let (result, unmapped) = self.mem.lock().set_region(&req);
        self.flush_unmapped(unmapped);
        result.map(|()| 0)
    }

    /// Makes sure no vCPU can still reach `unmapped` pages through a cached
    /// translation, then unpins them.
    fn flush_unmapped(&self, unmapped: Unmapped) {
        let Some(pages) = unmapped else { return };
        self.ept_generation.fetch_add(1, Relaxed);
        // Every vCPU in guest mode exits on this IPI (external-interrupt
        // exiting) and only takes it after leaving its VMX window; when it
        // enters again it sees the new generation and runs INVEPT first.
        // Waiting for every CPU therefore waits for every stale translation.
        self.host.kick_all_cpus();
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
        let result = Vcpu::create(vm.clone(), id).and_then(anon_file::install);
        if result.is_err() {
            *vm.vcpu_ids.lock() &= !(1 << id);
        }
        Ok(result? as isize)
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
            _ => Err(ioctl::unknown(cmd, &VM_IOCTLS)),
        }
    }
}
