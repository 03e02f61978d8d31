// SPDX-License-Identifier: GPL-2.0

//! rvmx: an Intel VT-x hypervisor exposing a KVM-like API on `/dev/rvmx`.

use kernel::{
    miscdevice::{MiscDeviceOptions, MiscDeviceRegistration},
    prelude::*,
    sync::Arc,
};

mod anon_file;
mod arch;
mod dev;
mod ept;
mod exit;
mod ioctl;
mod irq;
mod lapic;
mod mem;
mod phys;
mod stats;
mod uapi;
mod vcpu;
mod vm;
mod vmx;

use dev::RvmxFile;
use vmx::host::VmxHost;

module! {
    type: RvmxModule,
    name: "rvmx",
    authors: ["rvmx developers"],
    description: "Intel VT-x hypervisor with a KVM-like API on /dev/rvmx",
    license: "GPL",
    params: {
        apicv: bool {
            default: false,
            description: "1: use the CPU's APIC virtualization (TPR shadow, APIC-register virtualization, virtual-interrupt delivery, x2APIC virtualization) where it has it. 0 (default for now): emulate every APIC access",
        },
    },
}

/// The loaded module.
///
/// Drop order is field order: `misc` is deregistered before `host` goes.
/// No file of `/dev/rvmx` can outlive the module (each holds a module
/// reference), and each holds its own reference to `host` anyway.
#[pin_data]
struct RvmxModule {
    #[pin]
    misc: MiscDeviceRegistration<RvmxFile>,
    host: Arc<VmxHost>,
}

impl RvmxModule {
    /// The module that registered `misc`.
    fn from_misc(misc: &MiscDeviceRegistration<RvmxFile>) -> &Self {
        // SAFETY: the only `MiscDeviceRegistration<RvmxFile>` is the `misc`
        // field of the pinned `RvmxModule`, which lives as long as the
        // registration, so the containing struct is valid for the lifetime
        // of `misc`. `host` is initialized before `misc` is registered.
        unsafe {
            &*kernel::container_of!(
                misc as *const _ as *mut MiscDeviceRegistration<RvmxFile>,
                Self,
                misc
            )
        }
    }
}

impl kernel::InPlaceModule for RvmxModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            host: Self::bring_up()?,
            misc <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"rvmx" }),
        })
    }
}

impl RvmxModule {
    /// Checks VMX on the host and proves root operation on every online CPU.
    fn bring_up() -> Result<Arc<VmxHost>> {
        let host = VmxHost::new(module_parameters::apicv.value())?;
        let report = host.probe()?;
        match report.first_failure {
            None if report.all_runnable() => {
                let c = &host.caps;
                let apicv = host.controls().is_ok_and(|c| c.apicv);
                pr_info!(
                    "VMX root operation works on {} CPUs (VMCS revision {:#x}, {} bytes; EPT, unrestricted guest{}{})\n",
                    report.cpus,
                    c.vmcs_revision(),
                    c.vmcs_size(),
                    if c.has_vpid() { ", VPID" } else { "" },
                    if apicv { ", APIC virtualization" } else { "" },
                );
                if report.shared > 0 {
                    pr_info!(
                        "another hypervisor (kvm_intel?) holds VMX root operation on {} of {} CPUs: rvmx runs its VMs inside it there (VMPTRST/VMPTRLD, no VMXON)\n",
                        report.shared,
                        report.cpus,
                    );
                }
            }
            Some((cpu, e @ vmx::root::RootError::Busy)) => {
                pr_warn!(
                    "CPU {cpu}: {}; rvmx loads, but VM work fails with EBUSY until it is cleared\n",
                    e.describe()
                );
            }
            Some((cpu, e)) => {
                pr_err!(
                    "CPU {cpu} cannot enter VMX root operation: {}\n",
                    e.describe()
                );
                return Err(e.errno());
            }
            None => {
                pr_err!("no online CPU was probed\n");
                return Err(ENODEV);
            }
        }
        Ok(Arc::new(host, GFP_KERNEL)?)
    }
}
