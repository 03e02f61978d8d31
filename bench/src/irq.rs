//! Interrupt round trips through the in-kernel local APIC (x2APIC mode),
//! timed by the guest with RDTSC: self-IPI, the TSC-deadline timer
//! (deadline passed, and armed ahead with HLT or a spin), an EOI alone, and
//! an IPI to a second vCPU (spinning or halted) that answers with an IPI.
//!
//! The long-mode guests use labguest's IDT (`write_idt`): every vector's
//! stub saves RAX, RCX, RDX and jumps to the one handler, which EOIs and
//! returns with IRETQ. Each handler also counts its interrupts, and the host
//! checks that every iteration took exactly one. Results are left at `DATA`.
//! The second vCPU of the IPI rows stays in real mode after its SIPI and
//! takes its interrupt through the IVT.

use std::os::unix::thread::JoinHandleExt;
use std::time::Duration;

use labguest::{code, eoi, guest, iret64, rdtsc64, set_handler, x2apic_on};
use uapi::sys;

use crate::hv::{Hypervisor, Vcpu, Vm};

const MEM: usize = 0x20_0000;
const CODE: u64 = 0x1000;
/// Results: total cycles, interrupts taken, latency sum, latency minimum.
const DATA: usize = 0x6000;
/// The second vCPU's mode (0 spin, 1 HLT), its stop flag and ready flag.
const AP_MODE: usize = 0x6100;
/// The SIPI vector: the second vCPU starts at 0xa000 (CS 0xa00, IP 0).
const AP_CODE: usize = 0xa000;
const DONE_PORT: u16 = 0xf4;
/// Lab time after which a run that has not finished is interrupted.
const WATCHDOG: Duration = Duration::from_secs(30);

// R8 = iterations. A self-IPI of vector 0x40 through the x2APIC SELF IPI
// MSR; the handler EOIs and returns. R15 counts the interrupts.
guest!(
    B_SELF,
    set_handler!(B_SELF_h),
    x2apic_on!(),
    "xor r15d, r15d",
    "sti",
    rdtsc64!(),
    "mov r11, rax",
    "B_SELF_loop:",
    "mov ecx, 0x83f",
    "mov eax, 0x40",
    "xor edx, edx",
    "wrmsr",
    "dec r8",
    "jnz B_SELF_loop",
    rdtsc64!(),
    "sub rax, r11",
    "mov [0x6000], rax",
    "mov [0x6008], r15",
    "out 0xf4, al",
    "B_SELF_h:",
    "inc r15",
    eoi!(),
    iret64!(),
);

// R8 = iterations. LVT timer in TSC-deadline mode, vector 0x40; each
// iteration writes IA32_TSC_DEADLINE = 1, long past, so the timer fires at
// once; the handler EOIs and returns.
guest!(
    B_TDI,
    set_handler!(B_TDI_h),
    x2apic_on!(),
    "mov ecx, 0x832",
    "mov eax, 0x40040",
    "xor edx, edx",
    "wrmsr",
    "xor r15d, r15d",
    "sti",
    rdtsc64!(),
    "mov r11, rax",
    "B_TDI_loop:",
    "mov ecx, 0x6e0",
    "mov eax, 1",
    "xor edx, edx",
    "wrmsr",
    "dec r8",
    "jnz B_TDI_loop",
    rdtsc64!(),
    "sub rax, r11",
    "mov [0x6000], rax",
    "mov [0x6008], r15",
    "out 0xf4, al",
    "B_TDI_h:",
    "inc r15",
    eoi!(),
    iret64!(),
);

// R8 = iterations, R9 = D, R10 = 0: HLT until the interrupt, 1: spin.
// Each iteration arms IA32_TSC_DEADLINE = now + D (R12) and waits; the
// handler's first instruction after the stub reads the TSC and adds the
// time past the deadline to R13 (and keeps the minimum in RBX, which the
// host sets to i64::MAX). The HLT is only reached with IF=0 -> STI; HLT, so
// an interrupt that came early cannot leave it sleeping.
guest!(
    B_TDA,
    set_handler!(B_TDA_h),
    x2apic_on!(),
    "mov ecx, 0x832",
    "mov eax, 0x40040",
    "xor edx, edx",
    "wrmsr",
    "xor r13d, r13d",
    "xor r15d, r15d",
    "sti",
    rdtsc64!(),
    "mov r11, rax",
    "B_TDA_loop:",
    "xor r14d, r14d",
    rdtsc64!(),
    "add rax, r9",
    "mov r12, rax",
    "mov rdx, rax",
    "shr rdx, 32",
    "mov ecx, 0x6e0",
    "wrmsr",
    "test r10, r10",
    "jnz B_TDA_spin",
    "B_TDA_wait:",
    "cli",
    "test r14d, r14d",
    "jnz B_TDA_got",
    "sti",
    "hlt",
    "jmp B_TDA_wait",
    "B_TDA_got:",
    "sti",
    "jmp B_TDA_next",
    "B_TDA_spin:",
    "test r14d, r14d",
    "jz B_TDA_spin",
    "B_TDA_next:",
    "dec r8",
    "jnz B_TDA_loop",
    rdtsc64!(),
    "sub rax, r11",
    "mov [0x6000], rax",
    "mov [0x6008], r15",
    "mov [0x6010], r13",
    "mov [0x6018], rbx",
    "out 0xf4, al",
    "B_TDA_h:",
    rdtsc64!(),
    "sub rax, r12",
    "add r13, rax",
    "cmp rax, rbx",
    "jge B_TDA_h_min",
    "mov rbx, rax",
    "B_TDA_h_min:",
    "inc r15",
    "mov r14d, 1",
    eoi!(),
    iret64!(),
);

// R8 = iterations of an x2APIC EOI write with nothing in service (which
// the local APIC ignores): what the EOI's WRMSR costs by itself.
guest!(
    B_EOI,
    x2apic_on!(),
    rdtsc64!(),
    "mov r11, rax",
    "B_EOI_loop:",
    eoi!(),
    "dec r8",
    "jnz B_EOI_loop",
    rdtsc64!(),
    "sub rax, r11",
    "mov [0x6000], rax",
    "out 0xf4, al",
);

// vCPU 0, R8 = iterations: INIT and SIPI (vector 0x0a) to APIC 1, wait for
// it to say ready, then per iteration a fixed IPI (vector 0x40) to APIC 1
// and a spin (IF=1) until its answer (vector 0x41) arrived. At the end it
// sets the stop flag and sends one more IPI, so that vCPU 1 (even if
// halted) sees the flag and finishes too; it does not wait for that one's
// answer, which a spinning vCPU 1 may never send (it can see the flag and
// stop before it takes the IPI).
guest!(
    B_IPI,
    set_handler!(B_IPI_h),
    x2apic_on!(),
    "sti",
    "mov ecx, 0x830",
    "mov edx, 1",
    "mov eax, 0x4500",
    "wrmsr",
    "mov eax, 0x460a",
    "wrmsr",
    "B_IPI_ready:",
    "cmp byte ptr [0x6102], 0",
    "je B_IPI_ready",
    "xor r15d, r15d",
    rdtsc64!(),
    "mov r11, rax",
    "B_IPI_loop:",
    "xor r14d, r14d",
    "mov ecx, 0x830",
    "mov edx, 1",
    "mov eax, 0x40",
    "wrmsr",
    "B_IPI_wait:",
    "test r14d, r14d",
    "jz B_IPI_wait",
    "dec r8",
    "jnz B_IPI_loop",
    rdtsc64!(),
    "sub rax, r11",
    "mov [0x6000], rax",
    "mov [0x6008], r15",
    "mov byte ptr [0x6101], 1",
    "mov ecx, 0x830",
    "mov edx, 1",
    "mov eax, 0x40",
    "wrmsr",
    "out 0xf4, al",
    "B_IPI_h:",
    "inc r15",
    "mov r14d, 1",
    eoi!(),
    iret64!(),
);

// vCPU 1 after the SIPI, in real mode: x2APIC on, IVT entry 0x40, ready
// flag; then with IF=1 a spin (mode byte 0) or HLT (1) until the stop
// flag. Its handler answers with a fixed IPI (vector 0x41) to APIC 0, EOIs
// and returns.
guest!(
    B_AP,
    ".code16",
    "xor ax, ax",
    "mov ds, ax",
    "mov ss, ax",
    "mov sp, 0x9000",
    ".set B_AP_h_off, B_AP_h - B_AP_s",
    "mov ax, offset B_AP_h_off",
    "mov [0x100], ax",
    "mov [0x102], cs",
    x2apic_on!(),
    "sti",
    "mov byte ptr [0x6102], 1",
    "cmp byte ptr [0x6100], 0",
    "jne B_AP_halt",
    "B_AP_spin:",
    "cmp byte ptr [0x6101], 0",
    "je B_AP_spin",
    "jmp B_AP_done",
    "B_AP_halt:",
    "hlt",
    "cmp byte ptr [0x6101], 0",
    "je B_AP_halt",
    "B_AP_done:",
    "out 0xf4, al",
    "B_AP_h:",
    "push eax",
    "push ecx",
    "push edx",
    "mov ecx, 0x830",
    "xor edx, edx",
    "mov eax, 0x41",
    "wrmsr",
    "mov ecx, 0x80b",
    "xor eax, eax",
    "xor edx, edx",
    "wrmsr",
    "pop edx",
    "pop ecx",
    "pop eax",
    "iret",
);

/// What a run of one guest left at `DATA`.
struct Data {
    total: u64,
    count: u64,
    latency_sum: u64,
    latency_min: i64,
}

/// A long-mode guest `code` with labguest's IDT, on vCPU 0 of a fresh VM
/// with local APICs; `regs` sets its registers; `ap`: also start vCPU 1 on
/// another thread, with `AP_MODE` = `ap_mode`. Runs to vCPU 0's DONE.
fn run_guest(
    hv: Hypervisor,
    code: &[u8],
    regs: impl FnOnce(&mut sys::rvmx_regs),
    ap: Option<u8>,
) -> Result<Data, String> {
    let mut mem = labguest::GuestMem::new(MEM).map_err(|e| format!("guest memory: {e}"))?;
    mem.write(CODE as usize, code);
    labguest::identity_map(mem.bytes());
    labguest::write_idt(mem.bytes());
    if let Some(mode) = ap {
        mem.write(AP_CODE, code!(B_AP));
        mem.write(AP_MODE, &[mode, 0, 0]);
    }
    // SAFETY: `mem` outlives `vm` (declared before it, dropped after).
    let vm = unsafe { Vm::new(hv, mem.addr() as *mut u8, MEM, true)? };
    let mut bsp = vm.vcpu(0)?;
    let s = labguest::idt_sregs(labguest::long_mode(bsp.sregs()?));
    bsp.set_sregs(s)?;
    // SAFETY: all-zero is a valid `rvmx_regs`.
    let mut r: sys::rvmx_regs = unsafe { std::mem::zeroed() };
    (r.rip, r.rsp, r.rflags) = (CODE, MEM as u64, 2);
    regs(&mut r);
    bsp.set_regs(r)?;
    catch_sigusr1();
    let result = match ap {
        None => with_watchdog(&[], || run_to_done(&mut bsp, "vCPU 0")),
        Some(_) => {
            let mut ap = vm.vcpu(1)?;
            let two = online_cpus() >= 2;
            if two {
                pin(0)?;
            }
            let ap_thread = std::thread::spawn(move || {
                if two {
                    pin(1)?;
                }
                run_to_done(&mut ap, "vCPU 1").map_err(|e| format!("{e} ({})", where_is(&ap)))
            });
            let bsp_result = with_watchdog(&[ap_thread.as_pthread_t()], || {
                run_to_done(&mut bsp, "vCPU 0")
            })
            .map_err(|e| format!("{e} ({})", where_is(&bsp)));
            let ap_result = ap_thread
                .join()
                .unwrap_or_else(|_| Err("the vCPU 1 thread panicked".into()));
            unpin();
            match (bsp_result, ap_result) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
                (Err(b), Err(a)) => Err(format!(
                    "{b}; {a}; bytes at {AP_MODE:#x}: {:?}",
                    &mem.bytes()[AP_MODE..AP_MODE + 3]
                )),
            }
        }
    };
    result.map_err(|e| format!("{hv:?}: {e}"))?;
    Ok(Data {
        total: mem.read_u64(DATA),
        count: mem.read_u64(DATA + 8),
        latency_sum: mem.read_u64(DATA + 16),
        latency_min: mem.read_u64(DATA + 24) as i64,
    })
}

/// Where a vCPU stopped, for a failure message: RIP and the registers the
/// guests count in (R8 iterations left, R14 answer flag, R15 interrupts).
fn where_is(vcpu: &Vcpu) -> String {
    match vcpu.regs() {
        Ok(r) => format!(
            "rip {:#x} rflags {:#x} r8 {} r14 {} r15 {}",
            r.rip, r.rflags, r.r8, r.r14, r.r15
        ),
        Err(e) => format!("GET_REGS: {e}"),
    }
}

/// Runs `vcpu` until the guest's OUT to `DONE_PORT`; any other exit is an
/// error (the interrupt paths stay in the kernel on both hypervisors).
fn run_to_done(vcpu: &mut Vcpu, who: &str) -> Result<(), String> {
    let run = vcpu.run().map_err(|e| format!("{who}: {e}"))?;
    // SAFETY (union read): the exit reason says `io` is valid.
    match run.exit_reason {
        sys::RVMX_EXIT_IO if unsafe { run.__bindgen_anon_1.io.port } == DONE_PORT => Ok(()),
        other => Err(format!("{who}: unexpected exit {other}")),
    }
}

/// Runs `f` on this thread; if it has not returned within `WATCHDOG`,
/// SIGUSR1 goes to this thread and to `others`, which ends their RUN with
/// EINTR (so a hung guest fails the row instead of hanging the lab).
fn with_watchdog<T>(others: &[libc::pthread_t], f: impl FnOnce() -> T) -> T {
    // SAFETY: pthread_self has no preconditions.
    let mut targets = vec![unsafe { libc::pthread_self() }];
    targets.extend_from_slice(others);
    let (cancel, rx) = std::sync::mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        // Not on the CPU a vCPU thread was pinned to (it inherited that).
        unpin();
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
            for t in targets {
                // SAFETY: the watched threads are joined only after this
                // thread is (below), so they are alive.
                unsafe { libc::pthread_kill(t, libc::SIGUSR1) };
            }
        }
    });
    let out = f();
    drop(cancel);
    let _ = dog.join();
    out
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// SIGUSR1 interrupts a blocking ioctl (no SA_RESTART) and does nothing
/// else.
fn catch_sigusr1() {
    // SAFETY: a zeroed sigaction with a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

fn set_affinity(cpus: impl Iterator<Item = usize>) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    let ret = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if ret != 0 {
        return Err(format!(
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn pin(cpu: usize) -> Result<(), String> {
    set_affinity(std::iter::once(cpu))
}

fn unpin() {
    let _ = set_affinity(0..online_cpus());
}

fn check_count(what: &str, d: &Data, n: u64) -> Result<(), String> {
    if d.count != n {
        return Err(format!("{what}: {} interrupts in {n} iterations", d.count));
    }
    Ok(())
}

/// Cycles per self-IPI round trip.
pub fn self_ipi(hv: Hypervisor, n: u64) -> Result<u64, String> {
    let d = run_guest(hv, code!(B_SELF), |r| r.r8 = n, None)?;
    check_count("self-IPI", &d, n)?;
    Ok(d.total / n)
}

/// Cycles per TSC-deadline interrupt with the deadline already passed.
pub fn deadline_now(hv: Hypervisor, n: u64) -> Result<u64, String> {
    let d = run_guest(hv, code!(B_TDI), |r| r.r8 = n, None)?;
    check_count("TSC deadline passed", &d, n)?;
    Ok(d.total / n)
}

/// Mean cycles from the deadline (now + `delta`) to the handler, with the
/// vCPU halted (`halt`) or spinning.
pub fn deadline_armed(hv: Hypervisor, n: u64, delta: u64, halt: bool) -> Result<u64, String> {
    let d = run_guest(
        hv,
        code!(B_TDA),
        |r| {
            (r.r8, r.r9, r.r10) = (n, delta, u64::from(!halt));
            r.rbx = i64::MAX as u64;
        },
        None,
    )?;
    check_count("TSC deadline armed", &d, n)?;
    if d.latency_min < 0 {
        return Err(format!(
            "TSC deadline armed: an interrupt came {} cycles before its deadline",
            -d.latency_min
        ));
    }
    Ok(d.latency_sum / n)
}

/// Cycles per x2APIC EOI write with nothing in service.
pub fn eoi(hv: Hypervisor, n: u64) -> Result<u64, String> {
    let d = run_guest(hv, code!(B_EOI), |r| r.r8 = n, None)?;
    Ok(d.total / n)
}

/// Cycles per IPI to vCPU 1 and its IPI back, with vCPU 1 spinning or
/// halted (`halt`) between them.
pub fn ipi(hv: Hypervisor, n: u64, halt: bool) -> Result<u64, String> {
    let d = run_guest(hv, code!(B_IPI), |r| r.r8 = n, Some(u8::from(halt)))?;
    check_count("IPI to vCPU 1", &d, n)?;
    Ok(d.total / n)
}
