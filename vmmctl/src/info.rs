//! `vmmctl info`: the hypervisor's capability report.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use uapi::{sys, Rvmx};

use crate::hypervisor::{Backend, Kvm};

pub fn run(backend: Backend, device: &Path) -> Result<()> {
    if backend == Backend::Kvm {
        print!("{}", Kvm::open()?.report());
        return Ok(());
    }
    let rvmx = Rvmx::open(device).with_context(|| {
        format!(
            "cannot open {}: is rvmx loaded (insmod rvmx.ko)?",
            device.display()
        )
    })?;
    let version = rvmx.api_version().context("RVMX_GET_API_VERSION")?;
    let caps = rvmx.vmx_caps().context("RVMX_GET_VMX_CAPS")?;
    print!("{}", report(version, &caps));
    Ok(())
}

const FLAG_NAMES: [(u32, &str); 9] = [
    (sys::RVMX_CAP_VMX_USABLE, "vmx-usable"),
    (sys::RVMX_CAP_VMX_BUSY, "vmx-busy"),
    (sys::RVMX_CAP_EPT, "ept"),
    (sys::RVMX_CAP_VPID, "vpid"),
    (sys::RVMX_CAP_UNRESTRICTED_GUEST, "unrestricted-guest"),
    (sys::RVMX_CAP_TRUE_CONTROLS, "true-controls"),
    (sys::RVMX_CAP_HOST_FRED, "host-fred"),
    (sys::RVMX_CAP_APICV, "apicv"),
    (sys::RVMX_CAP_VMX_SHARED, "vmx-shared"),
];

/// The report as printed: one fact per line, control words split into the
/// bits that must be 1 and the bits that may be 1.
pub fn report(version: u32, c: &sys::rvmx_vmx_caps) -> String {
    let mut s = String::new();
    let flags: Vec<_> = FLAG_NAMES
        .iter()
        .filter(|(b, _)| c.flags & b != 0)
        .map(|(_, n)| *n)
        .collect();
    let state = if c.flags & sys::RVMX_CAP_VMX_USABLE != 0 {
        format!("usable on all {} online CPUs", c.cpus_probed)
    } else if c.flags & sys::RVMX_CAP_VMX_BUSY != 0 {
        "busy: CR4.VMXE is set outside VMX operation on some CPU; VMs cannot run on rvmx".into()
    } else if c.flags & sys::RVMX_CAP_VMX_SHARED != 0 {
        format!(
            "shared: another hypervisor (kvm_intel?) holds VMX root on {} of {} CPUs; rvmx runs its VMs inside it",
            c.cpus_shared, c.cpus_probed
        )
    } else {
        "not usable (see the kernel log)".into()
    };
    let _ = writeln!(s, "rvmx API version   {version}");
    let _ = writeln!(s, "VMX                {state}");
    let _ = writeln!(s, "features           {}", flags.join(" "));
    let _ = writeln!(
        s,
        "VMCS revision      {:#x}, {} bytes",
        c.vmcs_revision, c.vmcs_size
    );
    let _ = writeln!(s, "IA32_VMX_BASIC     {:#018x}", c.basic);
    for (name, ctl) in [
        ("pin-based", c.pinbased_ctls),
        ("proc-based", c.procbased_ctls),
        ("proc-based 2", c.procbased_ctls2),
        ("VM-exit", c.exit_ctls),
        ("VM-entry", c.entry_ctls),
    ] {
        let _ = writeln!(
            s,
            "{name:<18} must-be-1 {:#010x}  may-be-1 {:#010x}",
            ctl as u32,
            (ctl >> 32) as u32
        );
    }
    let _ = writeln!(s, "IA32_VMX_MISC      {:#018x}", c.misc);
    let _ = writeln!(s, "EPT/VPID caps      {:#018x}", c.ept_vpid_cap);
    let _ = writeln!(
        s,
        "CR0 fixed0/fixed1  {:#x} / {:#x}",
        c.cr0_fixed0, c.cr0_fixed1
    );
    let _ = writeln!(
        s,
        "CR4 fixed0/fixed1  {:#x} / {:#x}",
        c.cr4_fixed0, c.cr4_fixed1
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(flags: u32) -> sys::rvmx_vmx_caps {
        sys::rvmx_vmx_caps {
            flags,
            vmcs_revision: 1,
            vmcs_size: 1024,
            cpus_probed: 2,
            basic: 0x00da_0400_0000_0001,
            pinbased_ctls: 0x0000_00ff_0000_0016,
            procbased_ctls: 0,
            procbased_ctls2: 0,
            exit_ctls: 0,
            entry_ctls: 0,
            misc: 0,
            ept_vpid_cap: 0,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x37_27ff,
            cpus_shared: 0,
            padding: 0,
            shared_cpu_mask: 0,
            reserved: [0; 6],
        }
    }

    #[test]
    fn usable_report() {
        let r = report(1, &caps(sys::RVMX_CAP_VMX_USABLE | sys::RVMX_CAP_EPT));
        assert!(r.contains("usable on all 2 online CPUs"), "{r}");
        assert!(r.contains("features           vmx-usable ept\n"), "{r}");
        assert!(
            r.contains("pin-based          must-be-1 0x00000016  may-be-1 0x000000ff"),
            "{r}"
        );
    }

    #[test]
    fn busy_report_says_what_is_wrong() {
        let r = report(1, &caps(sys::RVMX_CAP_VMX_BUSY));
        assert!(r.contains("CR4.VMXE is set outside VMX operation"), "{r}");
    }

    #[test]
    fn shared_report_says_rvmx_runs_inside() {
        let mut c = caps(sys::RVMX_CAP_VMX_SHARED | sys::RVMX_CAP_EPT);
        (c.cpus_shared, c.shared_cpu_mask) = (2, 3);
        let r = report(1, &c);
        assert!(
            r.contains("shared: another hypervisor (kvm_intel?) holds VMX root on 2 of 2 CPUs"),
            "{r}"
        );
        assert!(r.contains("features           ept vmx-shared\n"), "{r}");
    }
}
