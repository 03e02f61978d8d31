//! Tests of the module's life cycle: unload refused while in use, repeated
//! load/unload, and living beside kvm_intel.

use std::path::Path;

use uapi::{sys, Rvmx, DEVICE_PATH};

use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::{ensure, kmod, Ctx};

pub const TESTS: &[Test] = &[
    Test {
        name: "rmmod_refused_while_open",
        run: rmmod_refused_while_open,
    },
    Test {
        name: "rmmod_refused_while_a_vm_lives",
        run: rmmod_refused_while_a_vm_lives,
    },
    Test {
        name: "load_unload_20_cycles",
        run: load_unload_20_cycles,
    },
    Test {
        name: "kvm_intel_loaded_means_busy",
        run: kvm_intel_loaded_means_busy,
    },
];

fn reload(ctx: &Ctx) -> TestResult {
    kmod::rmmod("rvmx").ctx("rmmod rvmx")?;
    ensure!(
        kmod::wait_for(Path::new(DEVICE_PATH), false),
        "{DEVICE_PATH} still there after rmmod"
    );
    kmod::insmod(&ctx.module).ctx(&format!("insmod {}", ctx.module.display()))?;
    ensure!(
        kmod::wait_for(Path::new(DEVICE_PATH), true),
        "{DEVICE_PATH} missing after insmod"
    );
    Ok(())
}

fn rmmod_refused_while_open(ctx: &Ctx) -> TestResult {
    let fd = Rvmx::open(DEVICE_PATH).ctx("open")?;
    match kmod::rmmod("rvmx") {
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => {
            return Err(Outcome::Fail(format!(
                "rmmod with an open fd: {e}, want EWOULDBLOCK"
            )))
        }
        Ok(()) => {
            // Put it back so the remaining tests can run.
            let _ = kmod::insmod(&ctx.module);
            return Err(Outcome::Fail(
                "rmmod succeeded while /dev/rvmx was open".into(),
            ));
        }
    }
    fd.api_version()
        .ctx("the open fd after the refused rmmod")?;
    drop(fd);
    reload(ctx)
}

fn load_unload_20_cycles(ctx: &Ctx) -> TestResult {
    for i in 0..20 {
        reload(ctx).map_err(|e| match e {
            Outcome::Fail(m) => Outcome::Fail(format!("cycle {i}: {m}")),
            skip => skip,
        })?;
        let v = Rvmx::open(DEVICE_PATH)
            .and_then(|fd| fd.api_version())
            .ctx("API version")?;
        ensure!(v == sys::RVMX_API_VERSION, "cycle {i}: API version {v}");
    }
    Ok(())
}

fn caps_flags() -> Result<u32, Outcome> {
    Ok(Rvmx::open(DEVICE_PATH)
        .and_then(|fd| fd.vmx_caps())
        .ctx("RVMX_GET_VMX_CAPS")?
        .flags)
}

fn kvm_intel_loaded_means_busy(ctx: &Ctx) -> TestResult {
    if kmod::is_loaded("kvm_intel") {
        return Err(Outcome::Skip(
            "kvm_intel was loaded before the tests; not touching it".into(),
        ));
    }
    if !kmod::available("kvm_intel") {
        return Err(Outcome::Skip(
            "kvm_intel is not available to modprobe".into(),
        ));
    }
    kmod::modprobe(&["kvm_intel"]).map_err(Outcome::Fail)?;
    let result = (|| {
        let flags = caps_flags()?;
        ensure!(
            flags & sys::RVMX_CAP_VMX_BUSY != 0,
            "kvm_intel holds VMX root, flags {flags:#x} lack BUSY"
        );
        ensure!(
            flags & sys::RVMX_CAP_VMX_USABLE == 0,
            "flags {flags:#x} claim USABLE beside kvm_intel"
        );
        // rvmx loads, with a warning, while kvm_intel holds VMX root.
        reload(ctx)?;
        let flags = caps_flags()?;
        ensure!(
            flags & sys::RVMX_CAP_VMX_BUSY != 0,
            "after reload beside kvm_intel, flags {flags:#x}"
        );
        Ok(())
    })();
    kmod::modprobe(&["-r", "kvm_intel"]).map_err(Outcome::Fail)?;
    result?;
    let flags = caps_flags()?;
    ensure!(
        flags & sys::RVMX_CAP_VMX_USABLE != 0 && flags & sys::RVMX_CAP_VMX_BUSY == 0,
        "after kvm_intel was removed, flags {flags:#x}, want USABLE"
    );
    Ok(())
}

fn rmmod_refused_while_a_vm_lives(ctx: &Ctx) -> TestResult {
    let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
    let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
    let vcpu = vm.create_vcpu(0).ctx("RVMX_CREATE_VCPU")?;
    drop(rvmx);
    drop(vm);
    // Only the vCPU fd is left, and it holds the module.
    match kmod::rmmod("rvmx") {
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => {
            return Err(Outcome::Fail(format!(
                "rmmod with a vCPU fd open: {e}, want EWOULDBLOCK"
            )))
        }
        Ok(()) => {
            let _ = kmod::insmod(&ctx.module);
            return Err(Outcome::Fail(
                "rmmod succeeded while a vCPU fd was open".into(),
            ));
        }
    }
    vcpu.regs().ctx("the vCPU after the refused rmmod")?;
    drop(vcpu);
    reload(ctx)
}
