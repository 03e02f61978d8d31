//! Checks of the host (the lab kernel) around a test: kernel reports that
//! appeared in the log since a point, and rvmx's module reference count.
//! The hostile-guest selftests and rvmx-fuzz both use them.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// What in a kernel log line means the kernel found a fault in itself.
pub const REPORTS: &[&str] = &[
    "BUG",
    "WARNING",
    "Oops",
    "general protection",
    "RCU stall",
    "rcu_sched self-detected stall",
    "soft lockup",
    "hard LOCKUP",
    "Call Trace",
    "UBSAN",
    "KASAN",
    "kernel panic",
];

/// The kernel log from the moment `open` was called (`/dev/kmsg`, read
/// without blocking).
pub struct Kmsg {
    file: File,
}

impl Kmsg {
    /// Opens `/dev/kmsg` positioned after the last record written so far.
    pub fn open() -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_nonblock()
            .open("/dev/kmsg")?;
        // SAFETY: lseek on an fd we own; SEEK_END on /dev/kmsg moves past
        // the records already in the buffer.
        if unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { file })
    }

    /// The messages logged since `open` (or the last call), one per record.
    pub fn new_lines(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // "prio,seq,usec,flags;text\n": keep the text.
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let text = rec.split_once(';').map_or(&*rec, |(_, t)| t);
                    out.push(text.lines().next().unwrap_or("").to_string());
                }
                // EPIPE: records were overwritten before we read them; go on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break, // EAGAIN: nothing more
            }
        }
        out
    }

    /// The new messages that are kernel fault reports.
    pub fn reports(&mut self) -> Vec<String> {
        self.new_lines()
            .into_iter()
            .filter(|l| REPORTS.iter().any(|r| l.contains(r)))
            .collect()
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// `/sys/module/NAME/refcnt`, None if the module is not loaded.
pub fn module_refcnt(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/module/{name}/refcnt"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits up to `limit` for the module's reference count to reach 0 (a
/// file closed by an exiting process is released a moment later); returns
/// the last count read.
pub fn wait_refcnt_zero(name: &str, limit: Duration) -> Option<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let n = module_refcnt(name);
        if n == Some(0) || n.is_none() || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A field of /proc/meminfo in KiB.
pub fn meminfo_kib(field: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
