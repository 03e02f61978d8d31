//! The rvmx backend (/dev/rvmx). rvmx's ABI so far answers only
//! `RVMX_GET_API_VERSION` and `RVMX_GET_VMX_CAPS`: every VM operation
//! fails at once with the reason, so `vmmctl run` never loads a kernel or
//! waits for a VM that cannot exist.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{CpuidEntry, Hypervisor, Vm};

pub struct Rvmx {
    api_version: u32,
}

impl Rvmx {
    pub fn open(device: &Path) -> Result<Self> {
        let dev = uapi::Rvmx::open(device).with_context(|| {
            format!(
                "cannot open {} for --hypervisor rvmx: is rvmx loaded (modprobe rvmx)?",
                device.display()
            )
        })?;
        let api_version = dev.api_version().context("RVMX_GET_API_VERSION")?;
        Ok(Self { api_version })
    }

    fn no_vms<T>(&self) -> Result<T> {
        bail!(
            "rvmx API version {} does not support creating VMs yet (needs RVMX_CREATE_VM); \
             use --hypervisor kvm",
            self.api_version
        )
    }
}

impl Hypervisor for Rvmx {
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        self.no_vms()
    }

    fn create_vm(&self) -> Result<Box<dyn Vm>> {
        self.no_vms()
    }
}
