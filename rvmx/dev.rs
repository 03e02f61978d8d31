// SPDX-License-Identifier: GPL-2.0

//! `/dev/rvmx`: the misc device and the ioctls on its file descriptors.

use kernel::{
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceRegistration},
    prelude::*,
    sync::Arc,
};

use crate::{
    anon_file, ioctl, uapi,
    vm::Vm,
    vmx::host::{ProbeReport, VmxHost},
    RvmxModule,
};

/// One open file description of `/dev/rvmx`.
pub(crate) struct RvmxFile {
    host: Arc<VmxHost>,
}

/// The ioctls `/dev/rvmx` answers.
const DEV_IOCTLS: [u32; 5] = [
    uapi::RVMX_GET_API_VERSION,
    uapi::RVMX_GET_VMX_CAPS,
    uapi::RVMX_CREATE_VM,
    uapi::RVMX_GET_VCPU_MMAP_SIZE,
    uapi::RVMX_GET_SUPPORTED_CPUID,
];

#[vtable]
impl MiscDevice for RvmxFile {
    type Ptr = KBox<Self>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        let module = RvmxModule::from_misc(misc);
        Ok(KBox::new(
            Self {
                host: module.host.clone(),
            },
            GFP_KERNEL,
        )?)
    }

    fn ioctl(me: &Self, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            // Commands without an argument refuse one, so that a later
            // version can give them one.
            uapi::RVMX_GET_API_VERSION | uapi::RVMX_GET_VCPU_MMAP_SIZE if arg != 0 => Err(EINVAL),
            uapi::RVMX_GET_API_VERSION => Ok(uapi::RVMX_API_VERSION as isize),
            uapi::RVMX_GET_VMX_CAPS => me.get_vmx_caps(arg),
            uapi::RVMX_CREATE_VM => me.create_vm(arg),
            uapi::RVMX_GET_VCPU_MMAP_SIZE => Ok(crate::vcpu::RUN_AREA_SIZE as isize),
            uapi::RVMX_GET_SUPPORTED_CPUID => crate::vcpu::get_supported_cpuid(arg),
            _ => Err(ioctl::unknown(cmd, &DEV_IOCTLS)),
        }
    }
}

impl RvmxFile {
    fn get_vmx_caps(&self, arg: usize) -> Result<isize> {
        let report = self.host.probe()?;
        ioctl::write_arg(arg, &vmx_caps(&self.host, &report))?;
        Ok(0)
    }

    /// `RVMX_CREATE_VM`: the argument is the machine type, which must be 0.
    fn create_vm(&self, machine_type: usize) -> Result<isize> {
        if machine_type != 0 {
            return Err(EINVAL);
        }
        let report = self.host.probe()?;
        if let Some((_, err)) = report.first_failure {
            return Err(err.errno());
        }
        Ok(anon_file::install(Vm::create(self.host.clone())?)? as isize)
    }
}

/// Fills the ABI's capability report from the host and a fresh probe.
fn vmx_caps(host: &VmxHost, report: &ProbeReport) -> uapi::rvmx_vmx_caps {
    let c = &host.caps;
    let flags = [
        (report.all_own(), uapi::RVMX_CAP_VMX_USABLE),
        (report.busy(), uapi::RVMX_CAP_VMX_BUSY),
        (report.shared > 0, uapi::RVMX_CAP_VMX_SHARED),
        (c.has_ept(), uapi::RVMX_CAP_EPT),
        (c.has_vpid(), uapi::RVMX_CAP_VPID),
        (
            c.has_unrestricted_guest(),
            uapi::RVMX_CAP_UNRESTRICTED_GUEST,
        ),
        (c.has_true_controls(), uapi::RVMX_CAP_TRUE_CONTROLS),
        (VmxHost::host_uses_fred(), uapi::RVMX_CAP_HOST_FRED),
        (host.controls().is_ok_and(|c| c.apicv), uapi::RVMX_CAP_APICV),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .fold(0, |acc, (_, bit)| acc | bit);
    uapi::rvmx_vmx_caps {
        flags,
        vmcs_revision: c.vmcs_revision(),
        vmcs_size: c.vmcs_size(),
        cpus_probed: report.cpus,
        basic: c.basic,
        pinbased_ctls: c.pinbased,
        procbased_ctls: c.procbased,
        procbased_ctls2: c.procbased2,
        exit_ctls: c.exit,
        entry_ctls: c.entry,
        misc: c.misc,
        ept_vpid_cap: c.ept_vpid,
        cr0_fixed0: c.cr0_fixed0,
        cr0_fixed1: c.cr0_fixed1,
        cr4_fixed0: c.cr4_fixed0,
        cr4_fixed1: c.cr4_fixed1,
        cpus_shared: report.shared,
        padding: 0,
        shared_cpu_mask: report.shared_mask,
        reserved: [0; 6],
    }
}
