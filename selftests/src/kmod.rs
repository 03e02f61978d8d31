//! Loading and unloading kernel modules from the tests.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `finit_module(2)` of the module file at `path`.
pub fn insmod(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let params = c"";
    // SAFETY: a valid fd and a NUL-terminated parameter string.
    let ret =
        unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `delete_module(2)` without waiting: fails with `EWOULDBLOCK` while the
/// module is in use.
pub fn rmmod(name: &str) -> io::Result<()> {
    let name = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: a NUL-terminated module name.
    let ret = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn is_loaded(name: &str) -> bool {
    Path::new("/sys/module")
        .join(name)
        .join("initstate")
        .exists()
}

/// `/lib/modules/$(uname -r)`.
pub fn modules_dir() -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Path::new("/lib/modules").join(release.trim())
}

/// Whether `modprobe name` can find the module (busybox's modprobe has no
/// `-n`): looks it up in this kernel's modules.dep.
pub fn available(name: &str) -> bool {
    let dep = modules_dir().join("modules.dep");
    let file = format!("/{}.ko", name.replace('_', "-"));
    std::fs::read_to_string(dep).is_ok_and(|deps| {
        deps.lines()
            .filter_map(|l| l.split(':').next())
            .any(|m| m.ends_with(&file) || m.ends_with(&format!("/{name}.ko")))
    })
}

/// Runs `modprobe ARGS`, with its stderr in the error.
pub fn modprobe(args: &[&str]) -> Result<(), String> {
    let out = Command::new("modprobe")
        .args(args)
        .output()
        .map_err(|e| format!("modprobe {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "modprobe {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Waits for devtmpfs to create or remove `path`.
pub fn wait_for(path: &Path, present: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() != present {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}
