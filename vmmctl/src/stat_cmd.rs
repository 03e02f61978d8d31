//! `vmmctl stat [PID]`: the live view of `--stat` for a vmmctl that is
//! already running, from another terminal, as `kvm_stat` watches a running
//! QEMU. A running `vmmctl run` holds its VM's statistics files open; this
//! takes copies of them with `pidfd_getfd(2)` (which needs the right to
//! ptrace the process: the same user where Yama allows it, else root) and
//! reads them like `--stat` does.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use uapi::stats::Stats;

use crate::hv_stats::{live_view, summary, HvStats, Totals, LIVE_ROWS};

/// Whether a `/proc/PID/fd` link names a statistics file: rvmx's
/// (`anon_inode:rvmx-stats`) or KVM's (`anon_inode:kvm-vm-stats`,
/// `anon_inode:kvm-vcpu-stats:N`).
pub fn is_stats_link(target: &str) -> bool {
    target == "anon_inode:rvmx-stats"
        || target == "anon_inode:kvm-vm-stats"
        || target.starts_with("anon_inode:kvm-vcpu-stats:")
}

/// The fds of `pid` that are statistics files.
fn stats_fds(pid: u32) -> std::io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if is_stats_link(&target.to_string_lossy()) {
            if let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                fds.push(fd);
            }
        }
    }
    fds.sort_unstable();
    Ok(fds)
}

/// The one vmmctl to watch among `candidates` (processes named vmmctl that
/// hold statistics files).
pub fn choose(candidates: &[u32]) -> Result<u32> {
    match candidates {
        [] => bail!(
            "no running vmmctl with a VM was found (start one with `vmmctl run`, or give its PID)"
        ),
        [one] => Ok(*one),
        many => {
            let list: Vec<String> = many.iter().map(u32::to_string).collect();
            bail!(
                "several vmmctl processes run VMs ({}): give one's PID",
                list.join(", ")
            )
        }
    }
}

/// Every other process named vmmctl that holds statistics files.
fn running_vmmctls() -> Result<Vec<u32>> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if pid != me && comm.trim_end() == "vmmctl" && stats_fds(pid).is_ok_and(|f| !f.is_empty()) {
            found.push(pid);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// A pidfd of `pid`: readable once the process has exited.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A copy of the process's file descriptor `fd`, in this process.
fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> std::io::Result<File> {
    // SAFETY: pidfd_getfd takes a pidfd, a target fd and flags and
    // returns a new fd of ours for the same file.
    let new = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { File::from_raw_fd(new as RawFd) })
}

/// Whether the process behind `pidfd` has exited, waiting up to `wait`.
fn exited(pidfd: &OwnedFd, wait: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// `vmmctl stat`: attaches to `pid` (or the one running vmmctl) and shows
/// its VM's counters: `count` live views a second apart (until it exits
/// when `None`), or with `once` the summary lines, once.
pub fn run(pid: Option<u32>, once: bool, count: Option<u32>) -> Result<()> {
    let pid = match pid {
        Some(p) => p,
        None => choose(&running_vmmctls()?)?,
    };
    if !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("no process {pid}");
    }
    let pidfd = pidfd_open(pid).with_context(|| format!("pidfd_open({pid})"))?;
    let fds = stats_fds(pid).with_context(|| format!("reading /proc/{pid}/fd"))?;
    if fds.is_empty() {
        bail!("process {pid} holds no VM statistics files (is it a `vmmctl run`?)");
    }
    let mut files = Vec::with_capacity(fds.len());
    for fd in fds {
        let f = pidfd_getfd(&pidfd, fd).with_context(|| {
            format!(
                "taking fd {fd} of process {pid} (pidfd_getfd: it needs the right to ptrace it)"
            )
        })?;
        files.push(Stats::new(f).with_context(|| format!("decoding fd {fd} of process {pid}"))?);
    }
    let stats = HvStats::from_files(files);
    let start = Instant::now();
    if once {
        print!(
            "{}",
            summary(stats.id(), start.elapsed(), &stats.totals()?, "\n")
        );
        return Ok(());
    }
    let mut prev = stats.totals()?;
    let mut last = Instant::now();
    let mut shown = 0;
    while count.is_none_or(|c| shown < c) {
        let gone = exited(&pidfd, Duration::from_secs(1));
        let now: Totals = stats.totals()?;
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        print!(
            "{}",
            live_view(
                stats.id(),
                start.elapsed().as_secs_f64(),
                &prev,
                &now,
                dt,
                LIVE_ROWS,
                "\n"
            )
        );
        prev = now;
        shown += 1;
        if gone {
            println!("vmmctl stat: process {pid} has exited");
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_links_are_recognised() {
        assert!(is_stats_link("anon_inode:rvmx-stats"));
        assert!(is_stats_link("anon_inode:kvm-vm-stats"));
        assert!(is_stats_link("anon_inode:kvm-vcpu-stats:3"));
        assert!(!is_stats_link("anon_inode:rvmx-vm"));
        assert!(!is_stats_link("anon_inode:kvm-vcpu:0"));
        assert!(!is_stats_link("/dev/rvmx"));
        assert!(!is_stats_link("socket:[1234]"));
    }

    #[test]
    fn one_candidate_is_chosen_else_the_user_is_asked() {
        assert_eq!(choose(&[42]).unwrap(), 42);
        let none = choose(&[]).unwrap_err().to_string();
        assert!(none.contains("no running vmmctl"), "{none}");
        let many = choose(&[7, 9]).unwrap_err().to_string();
        assert!(many.contains("(7, 9)") && many.contains("PID"), "{many}");
    }

    #[test]
    fn own_stats_files_are_found_and_read_through_pidfd_getfd() {
        // A file of ours is no stats file; the scan of our own fds works
        // and finds none (the real ones need a VM: lab tests).
        let me = std::process::id();
        assert!(stats_fds(me).unwrap().is_empty());
        // pidfd_getfd of our own stdin-like fd round-trips where the
        // kernel has it (5.6+); skip quietly where it has not.
        let Ok(pidfd) = pidfd_open(me) else { return };
        let probe = File::open("/proc/self/stat").unwrap();
        if let Ok(copy) = pidfd_getfd(&pidfd, probe.as_raw_fd()) {
            assert_ne!(copy.as_raw_fd(), probe.as_raw_fd());
        }
        assert!(!exited(&pidfd, Duration::from_millis(1)));
    }
}
