//! What the fuzzer did: calls per ioctl with their outcomes (an errno
//! histogram), and the problems it found.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static CALLS: AtomicU64 = AtomicU64::new(0);
static HIST: Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>> = Mutex::new(BTreeMap::new());
static PROBLEMS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::EOVERFLOW => "EOVERFLOW",
        _ => return format!("errno {e}"),
    };
    name.into()
}

/// Counts one call of `what` with its result.
pub fn record(what: &'static str, result: Result<i32, i32>) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => errno_name(e),
    };
    if let Ok(mut h) = HIST.lock() {
        *h.entry(what).or_default().entry(outcome).or_default() += 1;
    }
}

/// Counts an event that is not a call (an exit reason, a child's end).
pub fn event(what: &'static str, outcome: String) {
    if let Ok(mut h) = HIST.lock() {
        *h.entry(what).or_default().entry(outcome).or_default() += 1;
    }
}

/// Records a problem; the first few are printed at once.
pub fn problem(msg: String) {
    if let Ok(mut p) = PROBLEMS.lock() {
        if p.len() < 20 {
            println!("# PROBLEM: {msg}");
        }
        p.push(msg);
    }
}

pub fn problems() -> Vec<String> {
    PROBLEMS.lock().map(|p| p.clone()).unwrap_or_default()
}

/// The histogram, one line per call kind.
pub fn summary() -> Vec<String> {
    let h = HIST.lock().map(|h| h.clone()).unwrap_or_default();
    h.iter()
        .map(|(what, outcomes)| {
            let total: u64 = outcomes.values().sum();
            let detail: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
            format!("{what:<28} {total:>8}  {}", detail.join(", "))
        })
        .collect()
}
