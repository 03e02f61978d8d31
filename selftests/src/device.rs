//! Tests of `/dev/rvmx` itself: the API version, the capability report,
//! and the answers to malformed requests.

use std::collections::HashSet;
use std::mem::size_of;

use uapi::{sys, Rvmx, DEVICE_PATH};

use crate::ioctl::{self, errno_name};
use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::{ensure, kmod, Ctx};

pub const TESTS: &[Test] = &[
    Test {
        name: "open_device",
        run: open_device,
    },
    Test {
        name: "api_version",
        run: api_version,
    },
    Test {
        name: "caps_consistent",
        run: caps_consistent,
    },
    Test {
        name: "caps_match_cpuinfo",
        run: caps_match_cpuinfo,
    },
    Test {
        name: "unknown_ioctl_is_enotty",
        run: unknown_ioctl_is_enotty,
    },
    Test {
        name: "argumentless_ioctls_refuse_an_argument",
        run: argumentless_ioctls_refuse_an_argument,
    },
    Test {
        name: "wrong_size_or_direction_is_einval",
        run: wrong_size_or_direction_is_einval,
    },
    Test {
        name: "bad_pointer_is_efault",
        run: bad_pointer_is_efault,
    },
    Test {
        name: "concurrent_probes",
        run: concurrent_probes,
    },
];

fn open() -> Result<Rvmx, Outcome> {
    Rvmx::open(DEVICE_PATH).ctx(&format!("open {DEVICE_PATH}"))
}

fn open_device(_: &Ctx) -> TestResult {
    let a = open()?;
    let b = open()?;
    drop(a);
    b.api_version().ctx("API version on the second fd")?;
    Ok(())
}

fn api_version(_: &Ctx) -> TestResult {
    let v = open()?.api_version().ctx("RVMX_GET_API_VERSION")?;
    ensure!(
        v == sys::RVMX_API_VERSION,
        "API version {v}, header says {}",
        sys::RVMX_API_VERSION
    );
    Ok(())
}

/// allowed-0 bits (must be 1) must be a subset of allowed-1 bits (may be 1).
fn check_ctl(name: &str, ctl: u64) -> TestResult {
    let (must, may) = (ctl as u32, (ctl >> 32) as u32);
    ensure!(
        must & !may == 0,
        "{name} {ctl:#018x}: a control must be 1 but may not be"
    );
    Ok(())
}

fn caps_consistent(_: &Ctx) -> TestResult {
    let c = open()?.vmx_caps().ctx("RVMX_GET_VMX_CAPS")?;
    let online = online_cpus().ctx("counting online CPUs")?;
    let kvm = kmod::is_loaded("kvm_intel");
    println!(
        "# flags {:#x}, revision {:#x}, VMCS size {}, CPUs probed {}, kvm_intel loaded: {kvm}",
        c.flags, c.vmcs_revision, c.vmcs_size, c.cpus_probed
    );
    ensure!(
        c.cpus_probed == online,
        "probed {} CPUs, {online} are online",
        c.cpus_probed
    );
    ensure!(
        c.vmcs_revision == (c.basic & 0x7fff_ffff) as u32,
        "revision disagrees with IA32_VMX_BASIC"
    );
    ensure!(
        c.vmcs_size > 0 && c.vmcs_size <= 4096,
        "VMCS size {} out of (0, 4096]",
        c.vmcs_size
    );
    let usable = c.flags & sys::RVMX_CAP_VMX_USABLE != 0;
    let busy = c.flags & sys::RVMX_CAP_VMX_BUSY != 0;
    let shared = c.flags & sys::RVMX_CAP_VMX_SHARED != 0;
    ensure!(
        !busy && usable != shared,
        "exactly one of USABLE and SHARED expected (and no BUSY), flags {:#x}",
        c.flags
    );
    ensure!(
        shared == kvm,
        "SHARED is {shared} but kvm_intel loaded is {kvm}"
    );
    let want_shared = if kvm { c.cpus_probed } else { 0 };
    ensure!(
        c.cpus_shared == want_shared
            && (c.cpus_probed > 64 || c.shared_cpu_mask.count_ones() == c.cpus_shared),
        "{} CPUs shared (mask {:#x}), want {want_shared}",
        c.cpus_shared,
        c.shared_cpu_mask
    );
    ensure!(c.flags & sys::RVMX_CAP_EPT != 0, "rvmx loaded without EPT");
    ensure!(
        c.flags & sys::RVMX_CAP_UNRESTRICTED_GUEST != 0,
        "rvmx loaded without unrestricted guest"
    );
    for (name, ctl) in [
        ("pinbased", c.pinbased_ctls),
        ("procbased", c.procbased_ctls),
        ("procbased2", c.procbased_ctls2),
        ("exit", c.exit_ctls),
        ("entry", c.entry_ctls),
    ] {
        check_ctl(name, ctl)?;
    }
    ensure!(
        c.cr0_fixed0 & !c.cr0_fixed1 == 0,
        "CR0 fixed0 not within fixed1"
    );
    ensure!(
        c.cr4_fixed0 & !c.cr4_fixed1 == 0,
        "CR4 fixed0 not within fixed1"
    );
    ensure!(c.cr4_fixed0 & (1 << 13) != 0, "CR4.VMXE is not fixed to 1");
    ensure!(
        c.padding == 0 && c.reserved.iter().all(|&r| r == 0),
        "reserved words not zero"
    );
    Ok(())
}

fn online_cpus() -> std::io::Result<u32> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    let mut n = 0;
    for range in list.trim().split(',') {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|e| std::io::Error::other(format!("{range}: {e}")))
        };
        n += parse(hi)? - parse(lo)? + 1;
    }
    Ok(n)
}

/// The "vmx flags" the kernel lists for CPU 0 in /proc/cpuinfo.
fn cpuinfo_vmx_flags() -> Result<HashSet<String>, Outcome> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ctx("reading /proc/cpuinfo")?;
    let line = info
        .lines()
        .find(|l| l.starts_with("vmx flags"))
        .ok_or_else(|| {
            Outcome::Skip(
                "/proc/cpuinfo has no 'vmx flags' (CONFIG_X86_VMX_FEATURE_NAMES=n)".into(),
            )
        })?;
    Ok(line
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect())
}

fn caps_match_cpuinfo(_: &Ctx) -> TestResult {
    let c = open()?.vmx_caps().ctx("RVMX_GET_VMX_CAPS")?;
    let flags = cpuinfo_vmx_flags()?;
    for (bit, name) in [
        (sys::RVMX_CAP_EPT, "ept"),
        (sys::RVMX_CAP_VPID, "vpid"),
        (sys::RVMX_CAP_UNRESTRICTED_GUEST, "unrestricted_guest"),
    ] {
        let ours = c.flags & bit != 0;
        let kernels = flags.contains(name);
        ensure!(
            ours == kernels,
            "{name}: rvmx says {ours}, /proc/cpuinfo says {kernels}"
        );
    }
    Ok(())
}

fn expect_errno(fd: &Rvmx, cmd: u32, arg: usize, want: i32, what: &str) -> TestResult {
    match ioctl::raw(fd, cmd, arg) {
        Err(e) if e == want => Ok(()),
        Err(e) => Err(Outcome::Fail(format!(
            "{what} ({cmd:#x}): {}, want {}",
            errno_name(e),
            errno_name(want)
        ))),
        Ok(v) => Err(Outcome::Fail(format!(
            "{what} ({cmd:#x}): returned {v}, want {}",
            errno_name(want)
        ))),
    }
}

fn unknown_ioctl_is_enotty(_: &Ctx) -> TestResult {
    let fd = open()?;
    let ty = sys::RVMXIO;
    expect_errno(&fd, ioctl::io(ty, 0x7f), 0, libc::ENOTTY, "unused number")?;
    expect_errno(
        &fd,
        ioctl::ior(ty, 0xff, 8),
        0,
        libc::ENOTTY,
        "unused number with a size",
    )?;
    // KVM_GET_API_VERSION: another driver's magic.
    expect_errno(&fd, ioctl::io(0xae, 0x00), 0, libc::ENOTTY, "KVM's magic")?;
    Ok(())
}

fn argumentless_ioctls_refuse_an_argument(_: &Ctx) -> TestResult {
    let fd = open()?;
    for (cmd, what) in [
        (sys::RVMX_GET_API_VERSION, "GET_API_VERSION"),
        (sys::RVMX_GET_VCPU_MMAP_SIZE, "GET_VCPU_MMAP_SIZE"),
        (sys::RVMX_CREATE_VM, "CREATE_VM"),
    ] {
        expect_errno(
            &fd,
            cmd,
            1,
            libc::EINVAL,
            &format!("{what} with argument 1"),
        )?;
    }
    let vm = fd.create_vm().ctx("RVMX_CREATE_VM")?;
    let vcpu = vm.create_vcpu(0).ctx("RVMX_CREATE_VCPU")?;
    match ioctl::raw(&vcpu, sys::RVMX_RUN, 1) {
        Err(libc::EINVAL) => Ok(()),
        other => Err(Outcome::Fail(format!(
            "RUN with argument 1: {other:?}, want EINVAL"
        ))),
    }
}

fn wrong_size_or_direction_is_einval(_: &Ctx) -> TestResult {
    let fd = open()?;
    let ty = sys::RVMXIO;
    let mut buf = [0u8; 4096];
    let arg = buf.as_mut_ptr() as usize;
    let caps = size_of::<sys::rvmx_vmx_caps>();
    expect_errno(
        &fd,
        ioctl::ior(ty, 0x01, caps - 8),
        arg,
        libc::EINVAL,
        "GET_VMX_CAPS, smaller struct",
    )?;
    expect_errno(
        &fd,
        ioctl::ior(ty, 0x01, caps + 8),
        arg,
        libc::EINVAL,
        "GET_VMX_CAPS, larger struct",
    )?;
    expect_errno(
        &fd,
        ioctl::iow(ty, 0x01, caps),
        arg,
        libc::EINVAL,
        "GET_VMX_CAPS, write direction",
    )?;
    expect_errno(
        &fd,
        ioctl::ior(ty, 0x00, 4),
        arg,
        libc::EINVAL,
        "GET_API_VERSION with a size",
    )?;
    ensure!(
        buf.iter().all(|&b| b == 0),
        "a rejected ioctl wrote to its argument"
    );
    Ok(())
}

fn bad_pointer_is_efault(_: &Ctx) -> TestResult {
    let fd = open()?;
    let cmd = sys::RVMX_GET_VMX_CAPS;
    expect_errno(&fd, cmd, 0, libc::EFAULT, "NULL")?;
    expect_errno(&fd, cmd, 0x1000, libc::EFAULT, "unmapped user address")?;
    expect_errno(
        &fd,
        cmd,
        0xffff_8880_0000_0000,
        libc::EFAULT,
        "kernel address",
    )?;
    // A buffer whose tail runs off the end of a mapping.
    // SAFETY: anonymous mapping of one page, unmapped below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    ensure!(page != libc::MAP_FAILED, "mmap failed");
    let res = expect_errno(
        &fd,
        cmd,
        page as usize + 4096 - 16,
        libc::EFAULT,
        "buffer crossing the end of a mapping",
    );
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(page, 4096) };
    res
}

fn concurrent_probes(_: &Ctx) -> TestResult {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| -> Result<(), String> {
                let fd = Rvmx::open(DEVICE_PATH).map_err(|e| e.to_string())?;
                for _ in 0..25 {
                    fd.vmx_caps().map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Outcome::Fail(format!("RVMX_GET_VMX_CAPS: {e}"))),
            Err(_) => return Err(Outcome::Fail("a thread panicked".into())),
        }
    }
    Ok(())
}
