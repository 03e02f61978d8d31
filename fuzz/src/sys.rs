//! Raw system calls: ioctls with any command and argument, memory
//! mappings the fuzzer owns, and a per-thread timer that signals a RUN
//! which does not return by itself.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::stats;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | ((size & 0x3fff) << 16) | (ty << 8) | nr
}

pub const DIR_NONE: u32 = 0;
pub const DIR_W: u32 = IOC_WRITE;
pub const DIR_R: u32 = IOC_READ;
pub const DIR_RW: u32 = IOC_READ | IOC_WRITE;

pub const fn nr_of(cmd: u32) -> u32 {
    cmd & 0xff
}

pub const fn ty_of(cmd: u32) -> u32 {
    (cmd >> 8) & 0xff
}

/// ioctl, counted under `what`, and watched for a hang (no rvmx ioctl
/// may block for long: RUN ends within 2-5 ms by its signal, the others
/// wait at most for a RUN of the same vCPU).
pub fn ioctl(what: &'static str, fd: RawFd, cmd: u32, arg: usize) -> Result<i32, i32> {
    let slot = my_slot();
    let outer = slot.load(Ordering::SeqCst);
    if outer == 0 {
        slot.store(now_ms().max(1), Ordering::SeqCst);
    }
    let r = raw_ioctl(fd, cmd, arg);
    if outer == 0 {
        slot.store(0, Ordering::SeqCst);
    }
    stats::record(what, r);
    r
}

/// ioctl, not counted (for the fork child, which must not take locks).
pub fn raw_ioctl(fd: RawFd, cmd: u32, arg: usize) -> Result<i32, i32> {
    // SAFETY: the fuzzer only passes argument pointers into memory it owns
    // and may lose (its scratch pages), or addresses that are not mapped;
    // the kernel validates everything else.
    let ret = unsafe { libc::ioctl(fd, cmd as _, arg) };
    if ret < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret)
    }
}

pub fn close(fd: RawFd) {
    // SAFETY: callers pass fds they own and forget them afterwards.
    unsafe { libc::close(fd) };
}

/// An anonymous mapping owned by the fuzzer, unmapped on drop unless
/// already unmapped.
pub struct Map {
    pub ptr: usize,
    pub len: usize,
    mapped: bool,
}

impl Map {
    pub fn new(len: usize, prot: i32) -> Option<Self> {
        // SAFETY: a fresh private anonymous mapping, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Self {
            ptr: p as usize,
            len,
            mapped: true,
        })
    }

    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// The memory, if still mapped and writable by us.
    pub fn bytes(&mut self) -> Option<&mut [u8]> {
        if !self.mapped {
            return None;
        }
        // SAFETY: our mapping of `len` bytes; callers only use it for RW maps.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) })
    }

    /// Unmaps it now (a slot may still point at it: the kernel pinned the
    /// pages; the address range is never handed out again while `self`
    /// lives, because it is replaced by an inaccessible reservation).
    pub fn unmap(&mut self) {
        if self.mapped {
            // SAFETY: replaces our own range with an inaccessible one, so
            // no later mmap of ours reuses the address.
            unsafe {
                libc::mmap(
                    self.ptr as *mut _,
                    self.len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            self.mapped = false;
        }
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: our mapping (or the reservation that replaced it).
        unsafe { libc::munmap(self.ptr as *mut _, self.len) };
    }
}

// ---- Per-thread RUN timer ----------------------------------------------------

extern "C" fn on_signal(_: libc::c_int) {}

/// Installs a no-op SIGUSR1 handler without SA_RESTART: a signal ends a
/// blocking RUN with EINTR.
pub fn catch_sigusr1() {
    // SAFETY: installing a handler that does nothing is always sound.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

/// Sends SIGUSR1 to the thread that made it when an armed deadline
/// passes (a helper thread: the lab kernel has no POSIX timers).
pub struct ThreadTimer {
    shared: Arc<(Mutex<TimerState>, Condvar)>,
    helper: Option<std::thread::JoinHandle<()>>,
}

struct TimerState {
    deadline: Option<Instant>,
    quit: bool,
}

impl ThreadTimer {
    pub fn new() -> Option<Self> {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let shared = Arc::new((
            Mutex::new(TimerState {
                deadline: None,
                quit: false,
            }),
            Condvar::new(),
        ));
        let s = shared.clone();
        let helper = std::thread::Builder::new()
            .spawn(move || {
                let (lock, cv) = &*s;
                let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if st.quit {
                        return;
                    }
                    match st.deadline {
                        None => st = cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                st.deadline = None;
                                // SAFETY: the owner joins this thread in
                                // drop, so it is alive.
                                unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
                            } else {
                                st = cv
                                    .wait_timeout(st, d - now)
                                    .unwrap_or_else(|e| e.into_inner())
                                    .0;
                            }
                        }
                    }
                }
            })
            .ok()?;
        Some(Self {
            shared,
            helper: Some(helper),
        })
    }

    /// Signals once after `d` (0 disarms).
    pub fn arm(&self, d: Duration) {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        st.deadline = (!d.is_zero()).then(|| Instant::now() + d);
        cv.notify_one();
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.shared;
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            st.quit = true;
            cv.notify_one();
        }
        if let Some(h) = self.helper.take() {
            let _ = h.join();
        }
    }
}

// ---- Hang detection ------------------------------------------------------------

/// Milliseconds since the fuzzer started.
pub fn now_ms() -> u64 {
    static START: Mutex<Option<Instant>> = Mutex::new(None);
    let mut s = START.lock().unwrap_or_else(|e| e.into_inner());
    s.get_or_insert_with(Instant::now).elapsed().as_millis() as u64
}

/// When each thread's current ioctl began (0: in none), watched by
/// `watch_for_hangs`.
static RUNNING: Mutex<Vec<Arc<AtomicU64>>> = Mutex::new(Vec::new());

thread_local! {
    static MINE: Cell<Option<&'static AtomicU64>> = const { Cell::new(None) };
}

fn my_slot() -> &'static AtomicU64 {
    MINE.with(|m| {
        if let Some(s) = m.get() {
            return s;
        }
        let a = Arc::new(AtomicU64::new(0));
        if let Ok(mut r) = RUNNING.lock() {
            r.push(a.clone());
        }
        // Leaked on purpose: one word per thread that ever ran a vCPU.
        let s: &'static AtomicU64 = Box::leak(Box::new(a));
        let s: &'static AtomicU64 = s;
        m.set(Some(s));
        s
    })
}

/// RVMX_RUN on `fd`, with `timer` armed for `limit`, counted, and watched
/// for a hang.
pub fn run(fd: RawFd, timer: &ThreadTimer, limit: Duration) -> Result<i32, i32> {
    timer.arm(limit);
    let r = ioctl("RUN", fd, uapi::sys::RVMX_RUN, 0);
    timer.arm(Duration::ZERO);
    r
}

/// A thread that fails the run if some ioctl has not returned for
/// `limit`: a RUN's timer signalled it after 2-5 ms, and rvmx must end a
/// RUN within about a millisecond of a signal.
pub fn watch_for_hangs(limit: Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = now_ms();
        let stuck = RUNNING.lock().is_ok_and(|r| {
            r.iter().any(|s| {
                let t = s.load(Ordering::SeqCst);
                t != 0 && now.saturating_sub(t) > limit.as_millis() as u64
            })
        });
        if stuck {
            println!(
                "# PROBLEM: an ioctl (RUN: signalled after 2-5 ms) did not return in {} s: rvmx hung",
                limit.as_secs()
            );
            println!("not ok 1 fuzz # a thread hung in an rvmx ioctl");
            std::process::exit(3);
        }
    });
}
