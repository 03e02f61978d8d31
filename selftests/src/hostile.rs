//! The hostile-guest suite (issue 8): guests that execute every privileged
//! and VMX instruction, sweep the MSR space, write reserved bits of the
//! control and debug registers, try every XCR0, touch every I/O port and
//! unbacked guest-physical addresses, triple-fault in each mode, take an
//! interrupt storm and spin with interrupts off.
//!
//! Each test asserts what the guest (or the VMM) gets, as hardware would
//! do it for a guest without nested VMX: the exception vector (and error
//! code) a handler saw, or the clean exit. And each runs under a
//! `HostWatch`: a thread on the same host CPU as the vCPU must keep
//! making progress (the host still schedules), and the kernel log must
//! gain no BUG/WARNING/Oops/general protection/lockup report.
//!
//! Guests are long-mode programs with `labguest::write_idt`'s IDT; most
//! are generated here as a list of cases, each
//! `lea r13, [rip + after]; <instruction>; mov al, N; out 0x12, al`,
//! with `after` the end of the case: the handler (`G_HH`) reports the
//! vector (`out 0x11`) and the error code (`out 0x13`) and resumes at R13.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labguest::host::Kmsg;
use labguest::{code, eoi, guest, x2apic_on};
use uapi::sys;

use crate::guest::{TestVm, CODE, DONE_PORT};
use crate::irq::{allow_all_cpus, pin, Watchdog, WATCHDOG};
use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::vm::{catch_sigusr1, expect_eintr, set_cpu, signal_later};
use crate::{ensure, Ctx};

pub const TESTS: &[Test] = &[
    Test {
        name: "hostile_privileged_and_vmx_instructions",
        run: privileged_and_vmx_instructions,
    },
    Test {
        name: "hostile_instructions_as_on_kvm",
        run: instructions_as_on_kvm,
    },
    Test {
        name: "hostile_msr_sweep",
        run: msr_sweep,
    },
    Test {
        name: "hostile_x2apic_msr_sweep",
        run: x2apic_msr_sweep,
    },
    Test {
        name: "hostile_cr_dr_reserved_bits",
        run: cr_dr_reserved_bits,
    },
    Test {
        name: "hostile_xsetbv_every_xcr0",
        run: xsetbv_every_xcr0,
    },
    Test {
        name: "hostile_port_io_all_ports",
        run: port_io_all_ports,
    },
    Test {
        name: "hostile_mmio_to_unbacked_addresses",
        run: mmio_to_unbacked_addresses,
    },
    Test {
        name: "hostile_triple_fault_in_each_mode",
        run: triple_fault_in_each_mode,
    },
    Test {
        name: "hostile_interrupt_storm",
        run: interrupt_storm,
    },
    Test {
        name: "hostile_cli_spin_stopped_by_signal",
        run: cli_spin_stopped_by_signal,
    },
];

const MEM: usize = 0x20_0000;
/// Where the generic handler goes.
const HANDLER: u64 = 0x6000;

// ---- The host is still well ---------------------------------------------------

/// Watches the host while a hostile guest runs: a thread pinned to the
/// vCPU's CPU (0) that sleeps 1 ms at a time and counts, and the kernel
/// log from the start.
struct HostWatch {
    kmsg: Kmsg,
    ticks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl HostWatch {
    fn start() -> Result<Self, Outcome> {
        let kmsg = Kmsg::open().ctx("open /dev/kmsg")?;
        let ticks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (ticks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _ = set_cpu(0);
            while !s.load(Ordering::SeqCst) {
                t.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        // The test thread (the vCPU's) shares CPU 0 with it.
        pin(0)?;
        Ok(Self {
            kmsg,
            ticks,
            stop,
            thread: Some(thread),
            started: Instant::now(),
        })
    }

    /// The host scheduled the watcher during the run (when the run was
    /// long enough for a few of its sleeps) and still does, and the kernel
    /// logged no report.
    fn finish(mut self) -> TestResult {
        let during = self.ticks.load(Ordering::SeqCst);
        let took = self.started.elapsed();
        let after = Instant::now();
        while self.ticks.load(Ordering::SeqCst) == during {
            ensure!(
                after.elapsed() < Duration::from_secs(5),
                "a thread on the vCPU's CPU made no progress for 5 s after the guest ran: \
                 the host no longer schedules"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        ensure!(
            took < Duration::from_millis(200) || during >= 2,
            "a thread on the vCPU's CPU ran {during} times in {took:?} of guest run time"
        );
        let reports = self.kmsg.reports();
        ensure!(
            reports.is_empty(),
            "the kernel logged:\n{}",
            reports.join("\n")
        );
        Ok(())
    }
}

impl Drop for HostWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        allow_all_cpus();
    }
}

/// Runs `f` under a `HostWatch`; the test fails if either does.
fn watched(f: impl FnOnce() -> TestResult) -> TestResult {
    catch_sigusr1();
    let w = HostWatch::start()?;
    let r = f();
    let h = w.finish();
    r.and(h)
}

// ---- Generated guests -------------------------------------------------------------

// The handler of generated guests: reports the vector (port 0x11) and, for
// the vectors that push one, the error code (port 0x13), then resumes at
// R13 (the end of the case). Stack on entry: RDX, RCX, RAX, [error code,]
// RIP, CS, RFLAGS, RSP, SS.
guest!(
    G_HH,
    "out 0x11, al",
    "cmp al, 8",
    "je G_HH_ec",
    "cmp al, 10",
    "jb G_HH_noec",
    "cmp al, 14",
    "jbe G_HH_ec",
    "cmp al, 17",
    "je G_HH_ec",
    "cmp al, 21",
    "je G_HH_ec",
    "G_HH_noec:",
    "mov [rsp + 24], r13",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
    "G_HH_ec:",
    "mov rax, [rsp + 24]",
    "out 0x13, eax",
    "mov [rsp + 32], r13",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 8",
    "iretq",
);

/// What a case must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Execute without an exception.
    Runs,
    /// Raise this vector (no error code).
    Fault(u8),
    /// Raise #GP with this error code.
    Gp(u32),
}

struct Case {
    name: &'static str,
    /// Set-up instructions (not checked), then the instruction.
    setup: Vec<u8>,
    insn: Vec<u8>,
    want: Want,
}

fn case(name: &'static str, setup: &[u8], insn: &[u8], want: Want) -> Case {
    Case {
        name,
        setup: setup.to_vec(),
        insn: insn.to_vec(),
        want,
    }
}

/// mov rax, imm64
fn mov_rax(v: u64) -> Vec<u8> {
    let mut b = vec![0x48, 0xb8];
    b.extend_from_slice(&v.to_le_bytes());
    b
}

/// mov ecx, imm32
fn mov_ecx(v: u32) -> Vec<u8> {
    let mut b = vec![0xb9];
    b.extend_from_slice(&v.to_le_bytes());
    b
}

/// The program for `cases`, ending with the DONE.
fn program(cases: &[Case]) -> Vec<u8> {
    let mut p = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        p.extend_from_slice(&c.setup);
        // lea r13, [rip + insn + 4]
        p.extend_from_slice(&[0x4c, 0x8d, 0x2d]);
        p.extend_from_slice(&((c.insn.len() + 4) as i32).to_le_bytes());
        p.extend_from_slice(&c.insn);
        p.extend_from_slice(&[0xb0, i as u8, 0xe6, 0x12]); // mov al, i; out 0x12, al
    }
    p.extend_from_slice(&[0xe6, DONE_PORT as u8]);
    p
}

/// A long-mode VM with the IDT, the generic handler, and `cases`' program
/// at CODE.
fn case_vm(cases: &[Case]) -> Result<TestVm, Outcome> {
    let mut t = TestVm::long_mode_idt(MEM, &program(cases))?;
    t.mem.write(HANDLER as usize, code!(G_HH));
    t.mem.write_u64(labguest::HANDLER_PTR as usize, HANDLER);
    Ok(t)
}

/// One exit of a case program.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    Ran(u8),
    Vector(u8),
    ErrorCode(u32),
    Done,
}

fn out_data(t: &mut TestVm) -> Result<(u16, u32), Outcome> {
    let io = t.io();
    ensure!(
        io.direction == sys::RVMX_EXIT_IO_OUT as u8 && io.count == 1,
        "unexpected I/O exit {io:?}"
    );
    let n = usize::from(io.size).min(4);
    let mut b = [0u8; 4];
    b[..n].copy_from_slice(
        t.vcpu
            .run_data(io.data_offset, n)
            .ok_or_else(|| Outcome::Fail("I/O data outside the run area".into()))?,
    );
    Ok((io.port, u32::from_le_bytes(b)))
}

/// Runs a case program to its DONE (answering VMCALLs, which must come
/// from CPL 0 in 64-bit mode) and compares each case's outcome.
fn run_cases(t: &mut TestVm, cases: &[Case]) -> TestResult {
    let _w = Watchdog::start(WATCHDOG);
    let mut evs = Vec::new();
    let mut hypercalls = 0;
    loop {
        let reason = t.run()?;
        if reason == sys::RVMX_EXIT_HYPERCALL {
            // SAFETY: the exit reason says the union holds `hypercall`.
            let h = unsafe { t.vcpu.run_area().__bindgen_anon_1.hypercall };
            ensure!(
                h.flags == u64::from(sys::RVMX_EXIT_HYPERCALL_LONG_MODE),
                "VMCALL at CPL 0 in 64-bit mode: flags {:#x}",
                h.flags
            );
            hypercalls += 1;
            continue;
        }
        ensure!(
            reason == sys::RVMX_EXIT_IO,
            "{} after {evs:?}",
            t.describe_exit(reason)
        );
        let (port, v) = out_data(t)?;
        let ev = match port {
            0x12 => Ev::Ran(v as u8),
            0x11 => Ev::Vector(v as u8),
            0x13 => Ev::ErrorCode(v),
            p if p == DONE_PORT => Ev::Done,
            p => return Err(Outcome::Fail(format!("OUT to port {p:#x} after {evs:?}"))),
        };
        let done = ev == Ev::Done;
        evs.push(ev);
        if done {
            break;
        }
        ensure!(evs.len() < 4 * cases.len() + 8, "too many exits: {evs:?}");
    }
    let want_calls = cases.iter().filter(|c| c.insn == VMCALL).count();
    ensure!(
        hypercalls == want_calls,
        "{hypercalls} VMCALL exits, want {want_calls}"
    );
    compare(cases, evs)
}

const VMCALL: [u8; 3] = [0x0f, 0x01, 0xc1];

fn cpu_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

const UD: Want = Want::Fault(6);
/// A 4 KiB-aligned page of guest memory for memory operands.
const PAGE: u64 = 0x8000;

// ---- Privileged and VMX instructions -----------------------------------------------

fn privileged_cases() -> Vec<Case> {
    let flags = cpu_flags();
    let has = |f: &str| flags.iter().any(|x| x == f);
    let rax_page = mov_rax(PAGE);
    let rbx_page = [0x48, 0xc7, 0xc3, 0x00, 0x80, 0, 0]; // mov rbx, 0x8000
    let cases = vec![
        // No nested VMX: every VMX instruction exits (in VMX non-root
        // operation CR4.VMXE is 1) and rvmx raises #UD, as a processor
        // without VMX (CPUID.1:ECX.VMX is 0 for the guest) does.
        case("vmxon", &rax_page, &[0xf3, 0x0f, 0xc7, 0x30], UD),
        case("vmclear", &rax_page, &[0x66, 0x0f, 0xc7, 0x30], UD),
        case("vmptrld", &rax_page, &[0x0f, 0xc7, 0x30], UD),
        case("vmptrst", &rax_page, &[0x0f, 0xc7, 0x38], UD),
        case("vmread", &[], &[0x0f, 0x78, 0xc3], UD),
        case("vmwrite", &[], &[0x0f, 0x79, 0xd8], UD),
        case("vmlaunch", &[], &[0x0f, 0x01, 0xc2], UD),
        case("vmresume", &[], &[0x0f, 0x01, 0xc3], UD),
        case("vmxoff", &[], &[0x0f, 0x01, 0xc4], UD),
        case("invept", &rbx_page, &[0x66, 0x0f, 0x38, 0x80, 0x03], UD),
        case("invvpid", &rbx_page, &[0x66, 0x0f, 0x38, 0x81, 0x03], UD),
        case("vmcall at CPL 0 exits to the VMM", &[], &VMCALL, Want::Runs),
        // VM functions are not enabled: #UD in the guest, no exit.
        case("vmfunc", &[0x31, 0xc0], &[0x0f, 0x01, 0xd4], UD),
        // CR4.SMXE is 0 (and cannot be set): #UD.
        case("getsec", &[0x31, 0xc0], &[0x0f, 0x37], UD),
        // No SGX for the guest.
        case("encls", &[0x31, 0xc0], &[0x0f, 0x01, 0xcf], UD),
        case("enclu", &[0x31, 0xc0], &[0x0f, 0x01, 0xd7], UD),
        case("invd runs as a no-op", &[], &[0x0f, 0x08], Want::Runs),
        case(
            "wbinvd exits and is a no-op",
            &[],
            &[0x0f, 0x09],
            Want::Runs,
        ),
        case("rdpmc", &[0x31, 0xc9], &[0x0f, 0x33], Want::Gp(0)),
        case(
            "rdpmc fixed counter",
            &mov_ecx(0x4000_0000),
            &[0x0f, 0x33],
            Want::Gp(0),
        ),
        // XSAVES/XRSTORS are never enabled for the guest.
        case("xsaves", &rax_page, &[0x48, 0x0f, 0xc7, 0x28], UD),
        case("xrstors", &rax_page, &[0x48, 0x0f, 0xc7, 0x18], UD),
        case("monitor", &rax_page, &[0x0f, 0x01, 0xc8], UD),
        case("mwait", &[0x31, 0xc0, 0x31, 0xc9], &[0x0f, 0x01, 0xc9], UD),
        case(
            "rdrand",
            &[],
            &[0x0f, 0xc7, 0xf0],
            if has("rdrand") { Want::Runs } else { UD },
        ),
        case(
            "rdseed",
            &[],
            &[0x0f, 0xc7, 0xf8],
            if has("rdseed") { Want::Runs } else { UD },
        ),
        case(
            "wrmsr IA32_FEATURE_CONTROL",
            &[0xb9, 0x3a, 0, 0, 0, 0x31, 0xc0, 0x31, 0xd2],
            &[0x0f, 0x30],
            Want::Gp(0),
        ),
        case(
            "wrmsr IA32_SPEC_CTRL",
            &[0xb9, 0x48, 0, 0, 0, 0x31, 0xc0, 0x31, 0xd2],
            &[0x0f, 0x30],
            Want::Gp(0),
        ),
        case(
            "wrmsr IA32_DEBUGCTL",
            &[0xb9, 0xd9, 1, 0, 0, 0xb8, 1, 0, 0, 0, 0x31, 0xd2],
            &[0x0f, 0x30],
            Want::Gp(0),
        ),
        case("mov cr1 (no such register)", &[], &[0x0f, 0x22, 0xc8], UD),
        case(
            "mov cr9 (no such register)",
            &[],
            &[0x44, 0x0f, 0x22, 0xc8],
            UD,
        ),
        case("clts", &[], &[0x0f, 0x06], Want::Runs),
        case("invlpg", &rax_page, &[0x0f, 0x01, 0x38], Want::Runs),
        case(
            "swapgs twice",
            &[],
            &[0x0f, 0x01, 0xf8, 0x0f, 0x01, 0xf8],
            Want::Runs,
        ),
        case("int3", &[], &[0xcc], Want::Fault(3)),
        case("ud2", &[], &[0x0f, 0x0b], UD),
        case("int 0x80", &[], &[0xcd, 0x80], Want::Fault(0x80)),
        case("cpuid", &[0x31, 0xc0], &[0x0f, 0xa2], Want::Runs),
        case(
            "xgetbv without CR4.OSXSAVE",
            &[0x31, 0xc9],
            &[0x0f, 0x01, 0xd0],
            UD,
        ),
    ];
    cases
}

fn privileged_and_vmx_instructions(_: &Ctx) -> TestResult {
    let cases = privileged_cases();
    watched(|| {
        let mut t = case_vm(&cases)?;
        // vmxon's operand: a page with a VMCS revision, as a VMM passes.
        t.mem.write(PAGE as usize, &[1, 0, 0, 0]);
        run_cases(&mut t, &cases)
    })
}

/// What each case of a program did, from its exits.
fn outcomes(cases: &[Case], evs: Vec<Ev>) -> Result<Vec<Want>, Outcome> {
    let mut it = evs.into_iter().peekable();
    let mut got = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        got.push(match it.next() {
            Some(Ev::Ran(n)) if n as usize == i => Want::Runs,
            Some(Ev::Vector(13)) => match it.peek() {
                Some(Ev::ErrorCode(e)) => {
                    let e = *e;
                    it.next();
                    Want::Gp(e)
                }
                _ => Want::Fault(13),
            },
            Some(Ev::Vector(v)) => {
                if let Some(Ev::ErrorCode(_)) = it.peek() {
                    it.next();
                }
                Want::Fault(v)
            }
            other => {
                return Err(Outcome::Fail(format!(
                    "case {i} ({}): exit {other:?} out of order",
                    c.name
                )))
            }
        });
    }
    ensure!(it.next() == Some(Ev::Done), "no DONE after the last case");
    Ok(got)
}

/// Compares a case program's exits with what each case wants.
fn compare(cases: &[Case], evs: Vec<Ev>) -> TestResult {
    let got = outcomes(cases, evs)?;
    let bad: Vec<String> = cases
        .iter()
        .zip(&got)
        .filter(|(c, g)| **g != c.want)
        .map(|(c, g)| format!("{}: {g:?}, want {:?}", c.name, c.want))
        .collect();
    ensure!(bad.is_empty(), "{}", bad.join("\n"));
    Ok(())
}

// ---- CR and DR writes with reserved bits ---------------------------------------------

fn cr_dr_cases() -> Vec<Case> {
    // Each case loads the current register into RAX first and flips bits.
    // mov rax, cr0 = 0f 20 c0; mov rax, cr4 = 0f 20 e0; mov rax, cr3 = 0f 20 d8
    let or_rax = |bit: u32| -> Vec<u8> {
        // bts rax, bit
        vec![0x48, 0x0f, 0xba, 0xe8, bit as u8]
    };
    let btr_rax = |bit: u32| -> Vec<u8> { vec![0x48, 0x0f, 0xba, 0xf0, bit as u8] };
    let with = |read: &[u8], change: Vec<u8>| -> Vec<u8> {
        let mut v = read.to_vec();
        v.extend(change);
        v
    };
    let cr0 = [0x0f, 0x20, 0xc0];
    let cr4 = [0x0f, 0x20, 0xe0];
    let cr3 = [0x0f, 0x20, 0xd8];
    let to_cr0 = [0x0f, 0x22, 0xc0];
    let to_cr4 = [0x0f, 0x22, 0xe0];
    let to_cr3 = [0x0f, 0x22, 0xd8];
    let to_cr8 = [0x44, 0x0f, 0x22, 0xc0];
    let to_dr6 = [0x0f, 0x23, 0xf0];
    let to_dr7 = [0x0f, 0x23, 0xf8];
    let gp = Want::Gp(0);
    let cases = vec![
        case("cr0 bit 32", &with(&cr0, or_rax(32)), &to_cr0, gp),
        case("cr0 bit 63", &with(&cr0, or_rax(63)), &to_cr0, gp),
        // NW without CD (NW and CD are rvmx's: this write exits).
        case("cr0 NW without CD", &with(&cr0, or_rax(29)), &to_cr0, gp),
        // PG off in 64-bit mode: #GP natively; with NE cleared too the
        // write exits to rvmx, which must refuse it the same way.
        case(
            "cr0 PG off in 64-bit mode",
            &with(&cr0, btr_rax(31)),
            &to_cr0,
            gp,
        ),
        case(
            "cr0 PG and NE off in 64-bit mode",
            &[cr0.to_vec(), btr_rax(31), btr_rax(5)].concat(),
            &to_cr0,
            gp,
        ),
        case("cr0 CD on", &with(&cr0, or_rax(30)), &to_cr0, Want::Runs),
        case("cr0 CD off", &with(&cr0, btr_rax(30)), &to_cr0, Want::Runs),
        case(
            "cr4 VMXE (no nested VMX)",
            &with(&cr4, or_rax(13)),
            &to_cr4,
            gp,
        ),
        case("cr4 SMXE", &with(&cr4, or_rax(14)), &to_cr4, gp),
        case("cr4 bit 31", &with(&cr4, or_rax(31)), &to_cr4, gp),
        case("cr4 bit 63", &with(&cr4, or_rax(63)), &to_cr4, gp),
        case(
            "cr4 PAE off in 64-bit mode",
            &with(&cr4, btr_rax(5)),
            &to_cr4,
            gp,
        ),
        case(
            "cr4 PAE off and VMXE on in 64-bit mode",
            &[cr4.to_vec(), btr_rax(5), or_rax(13)].concat(),
            &to_cr4,
            gp,
        ),
        case(
            "cr3 bit 62 (above MAXPHYADDR)",
            &with(&cr3, or_rax(62)),
            &to_cr3,
            gp,
        ),
        case("cr3 reload", &cr3, &to_cr3, Want::Runs),
        case("cr8 16", &mov_rax(16), &to_cr8, gp),
        case(
            "cr8 15 then 0",
            &mov_rax(15),
            &[to_cr8.as_slice(), &[0x31, 0xc0], &to_cr8].concat(),
            Want::Runs,
        ),
        case("dr7 bit 32", &mov_rax(0x1_0000_0400), &to_dr7, gp),
        case("dr6 bit 63", &mov_rax(0x8000_0000_ffff_0ff0), &to_dr6, gp),
        case("dr7 valid", &mov_rax(0x400), &to_dr7, Want::Runs),
        case("dr6 valid", &mov_rax(0xffff_0ff0), &to_dr6, Want::Runs),
    ];
    cases
}

fn cr_dr_reserved_bits(_: &Ctx) -> TestResult {
    let cases = cr_dr_cases();
    watched(|| {
        let mut t = case_vm(&cases)?;
        run_cases(&mut t, &cases)?;
        // The guest is still in 64-bit mode with paging: EFER.LMA, CR0.PG.
        let s = t.vcpu.sregs().ctx("GET_SREGS")?;
        ensure!(
            s.efer & (1 << 10) != 0 && s.cr0 & (1 << 31) != 0 && s.cr4 & (1 << 5) != 0,
            "after the cases: EFER {:#x}, CR0 {:#x}, CR4 {:#x}",
            s.efer,
            s.cr0,
            s.cr4
        );
        Ok(())
    })
}

// ---- The same cases on KVM ---------------------------------------------------

/// Where KVM (kvm_intel on the same emulated CPU) differs from what the
/// cases want of rvmx, and why that is not rvmx's error.
const KVM_DIFFERS: &[(&str, &str)] = &[
    (
        "cr4 VMXE (no nested VMX)",
        "KVM offers nested VMX (its guest CPUID has VMX), so CR4.VMXE is writable",
    ),
    (
        "mwait",
        "KVM's MWAIT_NEVER_UD_FAULTS quirk (on by default) runs MONITOR/MWAIT as NOPs",
    ),
    ("monitor", "the same quirk"),
    (
        "wrmsr IA32_FEATURE_CONTROL",
        "KVM emulates IA32_FEATURE_CONTROL for nested VMX",
    ),
    (
        "wrmsr IA32_DEBUGCTL",
        "KVM drops DEBUGCTL bits it cannot virtualize (LBR here) with an 'Unhandled WRMSR' \
         message instead of #GP; rvmx does not virtualize IA32_DEBUGCTL at all",
    ),
];

fn instructions_as_on_kvm(_: &Ctx) -> TestResult {
    if crate::kmod::is_loaded("kvm_intel") {
        return Err(Outcome::Skip(
            "kvm_intel was loaded before; not touching it".into(),
        ));
    }
    if !crate::kmod::available("kvm_intel") {
        return Err(Outcome::Skip(
            "kvm_intel is not available to modprobe".into(),
        ));
    }
    crate::kmod::modprobe(&["kvm_intel", "enable_apicv=0"]).map_err(Outcome::Fail)?;
    let result = (|| {
        let mut lines = Vec::new();
        let mut bad = Vec::new();
        for cases in [privileged_cases(), cr_dr_cases()] {
            let got = crate::kvm::run_cases(&program(&cases), code!(G_HH), HANDLER)
                .and_then(|evs| outcomes(&cases, evs))
                .map_err(|e| match e {
                    Outcome::Fail(m) => Outcome::Fail(format!("{m}\ndifferences so far: {bad:?}")),
                    s => s,
                })?;
            for (c, g) in cases.iter().zip(&got) {
                if *g == c.want {
                    continue;
                }
                match KVM_DIFFERS.iter().find(|(n, _)| *n == c.name) {
                    Some((_, why)) => lines.push(format!("{}: KVM {g:?} ({why})", c.name)),
                    None => bad.push(format!("{}: KVM {g:?}, rvmx {:?}", c.name, c.want)),
                }
            }
        }
        for l in &lines {
            println!("# hostile_instructions_as_on_kvm: known difference: {l}");
        }
        ensure!(
            bad.is_empty(),
            "KVM disagrees with the outcomes the hostile suite asserts:\n{}",
            bad.join("\n")
        );
        Ok(())
    })();
    crate::kmod::modprobe(&["-r", "kvm_intel"]).map_err(Outcome::Fail)?;
    result
}

// ---- MSR sweeps -----------------------------------------------------------------

/// Where the sweep guests find their MSR list and leave their results.
const MSR_TABLE: usize = 0x10_0000;
const MSR_RESULT: usize = 0x18_0000;

// For each of R12 MSR numbers at RSI: RDMSR (R15 = 0) or WRMSR of 0
// (R15 = 1); the byte at RBX + i becomes 1 if it ran, or the vector of
// the exception it raised. Optionally x2APIC on first (R11 = 1).
guest!(
    G_MSR,
    "lea rax, [rip + G_MSR_h]",
    "mov qword ptr [0x2f00], rax",
    "cmp r11, 1",
    "jne G_MSR_go",
    x2apic_on!(),
    "G_MSR_go:",
    "xor r14d, r14d",
    "G_MSR_loop:",
    "cmp r14, r12",
    "jae G_MSR_done",
    "mov ecx, [rsi + r14 * 4]",
    "lea r13, [rip + G_MSR_next]",
    "xor eax, eax",
    "xor edx, edx",
    "cmp r15, 1",
    "je G_MSR_wr",
    "rdmsr",
    "jmp G_MSR_ok",
    "G_MSR_wr:",
    "wrmsr",
    "G_MSR_ok:",
    "mov byte ptr [rbx + r14], 1",
    "G_MSR_next:",
    "inc r14",
    "jmp G_MSR_loop",
    "G_MSR_done:",
    "out 0xf4, al",
    "G_MSR_h:",
    "mov byte ptr [rbx + r14], al",
    "cmp al, 13",
    "jne G_MSR_noec",
    "mov [rsp + 32], r13",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 8",
    "iretq",
    "G_MSR_noec:",
    "mov [rsp + 24], r13",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
);

/// The MSRs a guest in xAPIC mode can read (docs/api.md's list).
const READABLE: &[u32] = &[
    0x10,
    0x17,
    0x1b,
    0x8b,
    0xfe,
    0x174,
    0x175,
    0x176,
    0x1a0,
    0x277,
    0x2ff,
    0x6e0,
    0xc000_0080,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0103,
];

/// Runs G_MSR over `msrs`; returns each one's result byte.
fn sweep(msrs: &[u32], write: bool, x2apic: bool) -> Result<Vec<u8>, Outcome> {
    let mut t = TestVm::long_mode_idt(MEM, code!(G_MSR))?;
    for (i, m) in msrs.iter().enumerate() {
        t.mem.write(MSR_TABLE + 4 * i, &m.to_le_bytes());
    }
    let mut r = t.vcpu.regs().ctx("GET_REGS")?;
    (r.rsi, r.rbx, r.r12, r.r15, r.r11) = (
        MSR_TABLE as u64,
        MSR_RESULT as u64,
        msrs.len() as u64,
        u64::from(write),
        u64::from(x2apic),
    );
    t.vcpu.set_regs(&r).ctx("SET_REGS")?;
    let _w = Watchdog::start(Duration::from_secs(120));
    t.run_to_done()?;
    Ok(t.mem.bytes()[MSR_RESULT..MSR_RESULT + msrs.len()].to_vec())
}

fn msr_ranges() -> Vec<u32> {
    let mut v: Vec<u32> = (0..0x2000).collect();
    v.extend(0xc000_0000..0xc000_2000);
    v.extend(0x4000_0000..0x4000_0100);
    // And 256 scattered ones (a fixed LCG: the same every run).
    let mut x: u32 = 0x1234_5678;
    for _ in 0..256 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        v.push(x);
    }
    v
}

fn msr_sweep(_: &Ctx) -> TestResult {
    watched(|| {
        let msrs = msr_ranges();
        let reads = sweep(&msrs, false, false)?;
        let mut bad = Vec::new();
        for (m, r) in msrs.iter().zip(&reads) {
            let want = if READABLE.contains(m) { 1 } else { 13 };
            if *r != want {
                bad.push(format!("RDMSR {m:#x}: {r}, want {want}"));
            }
        }
        ensure!(
            bad.is_empty(),
            "{} of {} MSRs (1 = read, 13 = #GP):\n{}",
            bad.len(),
            msrs.len(),
            bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
        // Writes of 0: every MSR that cannot be read cannot be written.
        let writes = sweep(&msrs, true, false)?;
        let mut bad = Vec::new();
        for ((m, r), w) in msrs.iter().zip(&reads).zip(&writes) {
            if *r == 13 && *w != 13 {
                bad.push(format!("WRMSR {m:#x} of 0: {w}, want #GP (13)"));
            }
            if *w != 1 && *w != 13 {
                bad.push(format!("WRMSR {m:#x} of 0: vector {w}"));
            }
        }
        ensure!(
            bad.is_empty(),
            "{}",
            bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
        Ok(())
    })
}

/// The x2APIC MSRs the SDM lets software read (table 11-6), for a local
/// APIC with six LVT entries (no CMCI): others #GP, and so do EOI and
/// SELF IPI, which are write-only.
fn x2apic_readable(m: u32) -> bool {
    matches!(m, 0x802 | 0x803 | 0x808 | 0x80a | 0x80d | 0x80f | 0x810..=0x828 | 0x830 | 0x832..=0x839 | 0x83e)
}

fn x2apic_msr_sweep(_: &Ctx) -> TestResult {
    watched(|| {
        let msrs: Vec<u32> = (0x800..0x900).collect();
        let reads = sweep(&msrs, false, true)?;
        let mut bad = Vec::new();
        for (m, r) in msrs.iter().zip(&reads) {
            let want = if x2apic_readable(*m) { 1 } else { 13 };
            if *r != want {
                bad.push(format!("RDMSR {m:#x}: {r}, want {want}"));
            }
        }
        ensure!(bad.is_empty(), "in x2APIC mode:\n{}", bad.join("\n"));
        Ok(())
    })
}

// ---- XSETBV ------------------------------------------------------------------------

// For each of R12 64-bit values at RSI: XSETBV XCR0 to it; the byte at
// RBX + i is 1 if accepted, else the vector. XCR0 goes back to 3 after
// each accepted value.
guest!(
    G_XCR,
    "lea rax, [rip + G_XCR_h]",
    "mov qword ptr [0x2f00], rax",
    "xor r14d, r14d",
    "G_XCR_loop:",
    "cmp r14, r12",
    "jae G_XCR_done",
    "mov rax, [rsi + r14 * 8]",
    "mov rdx, rax",
    "shr rdx, 32",
    "xor ecx, ecx",
    "lea r13, [rip + G_XCR_next]",
    "xsetbv",
    "mov byte ptr [rbx + r14], 1",
    "mov eax, 3",
    "xor edx, edx",
    "xsetbv",
    "G_XCR_next:",
    "inc r14",
    "jmp G_XCR_loop",
    "G_XCR_done:",
    "out 0xf4, al",
    "G_XCR_h:",
    "mov byte ptr [rbx + r14], al",
    "mov [rsp + 32], r13",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "add rsp, 8",
    "iretq",
);

/// Whether XSETBV XCR0 = `v` must succeed (SDM vol. 1, 13.3; rvmx allows
/// nothing the host's XCR0 lacks).
fn xcr0_valid(v: u64, host: u64) -> bool {
    let bit = |b: u32| v & (1 << b) != 0;
    let avx512 = (v >> 5) & 7;
    v & 1 != 0
        && (!bit(2) || bit(1)) // AVX needs SSE
        && (avx512 == 0 || (avx512 == 7 && bit(2)))
        && bit(3) == bit(4)
        && bit(17) == bit(18)
        && v & !host == 0
}

fn xsetbv_every_xcr0(_: &Ctx) -> TestResult {
    let flags = cpu_flags();
    if !flags.iter().any(|f| f == "xsave") {
        return Err(Outcome::Skip("the host has no XSAVE".into()));
    }
    let host = crate::irq::host_xcr0();
    let mut values: Vec<u64> = (0..0x400).collect();
    values.extend([
        0x2_0003,
        0x4_0003,
        0x6_0007,
        0x6_00e7,
        host,
        host | (1 << 63),
        1 << 32 | 3,
        u64::MAX,
    ]);
    watched(|| {
        let mut t = TestVm::long_mode_idt(MEM, code!(G_XCR))?;
        let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
        s.cr4 |= (1 << 9) | (1 << 18); // OSFXSR, OSXSAVE
        t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
        for (i, v) in values.iter().enumerate() {
            t.mem.write_u64(MSR_TABLE + 8 * i, *v);
        }
        let mut r = t.vcpu.regs().ctx("GET_REGS")?;
        (r.rsi, r.rbx, r.r12) = (MSR_TABLE as u64, MSR_RESULT as u64, values.len() as u64);
        t.vcpu.set_regs(&r).ctx("SET_REGS")?;
        {
            let _w = Watchdog::start(WATCHDOG);
            t.run_to_done()?;
        }
        let got = &t.mem.bytes()[MSR_RESULT..MSR_RESULT + values.len()].to_vec();
        let mut bad = Vec::new();
        let mut accepted = 0;
        for (v, g) in values.iter().zip(got) {
            let want = if xcr0_valid(*v, host) { 1 } else { 13 };
            accepted += usize::from(*g == 1);
            if *g != want {
                bad.push(format!("XCR0 {v:#x}: {g}, want {want}"));
            }
        }
        ensure!(
            bad.is_empty(),
            "host XCR0 {host:#x}:\n{}",
            bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
        ensure!(accepted >= 2, "only {accepted} XCR0 values accepted");
        Ok(())
    })
}

// ---- Port I/O and MMIO ----------------------------------------------------------------

// IN AL from every port 0..=0xffff, then OUT of the value read back to the
// same port; the VMM answers each IN with the port's low byte + 1.
guest!(
    G_PIO,
    "xor edx, edx",
    "G_PIO_loop:",
    "in al, dx",
    "out dx, al",
    "inc edx",
    "cmp edx, 0x10000",
    "jb G_PIO_loop",
    "out 0xf4, al",
);

fn port_io_all_ports(_: &Ctx) -> TestResult {
    watched(|| {
        let mut t = TestVm::long_mode(MEM, code!(G_PIO))?;
        let _w = Watchdog::start(Duration::from_secs(300));
        let mut port: u32 = 0;
        let mut ins = 0u32;
        loop {
            let reason = t.run()?;
            ensure!(
                reason == sys::RVMX_EXIT_IO,
                "port {port:#x}: {}",
                t.describe_exit(reason)
            );
            let io = t.io();
            ensure!(
                io.size == 1 && io.count == 1,
                "port {port:#x}: I/O exit {io:?}"
            );
            if io.direction == sys::RVMX_EXIT_IO_IN as u8 {
                ensure!(
                    u32::from(io.port) == port,
                    "IN from port {:#x}, want {port:#x}",
                    io.port
                );
                let d = t
                    .vcpu
                    .run_data(io.data_offset, 1)
                    .ok_or_else(|| Outcome::Fail("I/O data outside the run area".into()))?;
                d[0] = (port as u8).wrapping_add(1);
                ins += 1;
                continue;
            }
            let (p, v) = out_data(&mut t)?;
            if port == 0x10000 {
                ensure!(p == DONE_PORT, "OUT to {p:#x} after the last port");
                break;
            }
            ensure!(
                u32::from(p) == port && v == u32::from((port as u8).wrapping_add(1)),
                "OUT {v:#x} to port {p:#x}, want {:#x} to {port:#x}",
                (port as u8).wrapping_add(1)
            );
            port += 1;
        }
        ensure!(ins == 0x10000, "{ins} IN exits, want 65536");
        Ok(())
    })
}

// For each of R12 addresses at RSI: a 4-byte read (into R8), a 4-byte
// write of the address's low half, an 8-byte read; then a jump to R9
// (execution from MMIO).
guest!(
    G_MMIO,
    "xor r14d, r14d",
    "G_MMIO_loop:",
    "cmp r14, r12",
    "jae G_MMIO_exec",
    "mov rdi, [rsi + r14 * 8]",
    "mov r8d, [rdi]",
    "mov [rdi], edi",
    "mov r10, [rdi]",
    "inc r14",
    "jmp G_MMIO_loop",
    "G_MMIO_exec:",
    "jmp r9",
);

/// GPAs in no slot (memory is 0-2 MiB); all mapped by `map_high`.
const UNBACKED: &[u64] = &[
    0x20_0000,
    0x3fff_fff8,
    0x4000_0000,
    0xc000_0000,
    0xfec0_0000,
    0xfed0_0000,
    0xffff_fff0,
    0x1_0000_0000,
    0x10_0000_0000,
    0x7f_ffff_fff8,
];

/// Extends `identity_map`'s tables so each of `gpas` is identity-mapped
/// (2 MiB pages; page directories for GiBs beyond the first at 0x14000+).
fn map_high(mem: &mut [u8], gpas: &[u64]) {
    let pdpt = labguest::PAGE_TABLES as usize + 0x1000;
    let mut next_pd = 0x14000usize;
    let put = |mem: &mut [u8], at: usize, v: u64| mem[at..at + 8].copy_from_slice(&v.to_le_bytes());
    for &g in gpas {
        let gib = (g >> 30) as usize;
        if gib == 0 {
            continue;
        }
        let entry = pdpt + 8 * gib;
        let mut pd =
            u64::from_le_bytes(mem[entry..entry + 8].try_into().unwrap_or_default()) & !0xfff;
        if pd == 0 {
            pd = next_pd as u64;
            next_pd += 0x1000;
            put(mem, entry, pd | 3);
        }
        let pde = pd as usize + 8 * ((g >> 21) & 511) as usize;
        put(mem, pde, (g & !0x1f_ffff) | 0x83);
    }
}

fn mmio_to_unbacked_addresses(_: &Ctx) -> TestResult {
    watched(|| {
        let mut t = TestVm::long_mode(MEM, code!(G_MMIO))?;
        map_high(t.mem.bytes(), &[UNBACKED, &[0x8000_0000]].concat());
        for (i, g) in UNBACKED.iter().enumerate() {
            t.mem.write_u64(MSR_TABLE + 8 * i, *g);
        }
        let mut r = t.vcpu.regs().ctx("GET_REGS")?;
        (r.rsi, r.r12, r.r9) = (MSR_TABLE as u64, UNBACKED.len() as u64, 0x8000_0000);
        t.vcpu.set_regs(&r).ctx("SET_REGS")?;
        let _w = Watchdog::start(WATCHDOG);
        for &g in UNBACKED {
            for (len, write) in [(4, false), (4, true), (8, false)] {
                let reason = t.run()?;
                ensure!(
                    reason == sys::RVMX_EXIT_MMIO,
                    "access to {g:#x}: {}",
                    t.describe_exit(reason)
                );
                // SAFETY: the exit reason says the union holds `mmio`.
                let m = unsafe { t.vcpu.run_area().__bindgen_anon_1.mmio };
                ensure!(
                    m.phys_addr == g && m.len == len && (m.is_write != 0) == write,
                    "access to {g:#x}: MMIO exit {m:?}, want len {len} write {write}"
                );
                if write {
                    let d = u32::from_le_bytes([m.data[0], m.data[1], m.data[2], m.data[3]]);
                    ensure!(d == g as u32, "write to {g:#x}: data {d:#x}");
                }
            }
        }
        // The jump to 0x80000000: fetching from MMIO cannot be emulated.
        let reason = t.run()?;
        ensure!(
            reason == sys::RVMX_EXIT_INTERNAL_ERROR,
            "execution from MMIO: {}, want an internal error",
            t.describe_exit(reason)
        );
        let (sub, _) = t.vcpu.internal_error().unwrap_or((0, Vec::new()));
        ensure!(
            sub == sys::RVMX_INTERNAL_ERROR_EMULATION,
            "execution from MMIO: suberror {sub}, want EMULATION"
        );
        Ok(())
    })
}

// ---- Triple faults ----------------------------------------------------------------------

fn triple_fault_in_each_mode(_: &Ctx) -> TestResult {
    watched(|| {
        // UD2 with an IDT of limit 0, in real, protected and long mode.
        for mode in 0..3 {
            let code = [0x0f, 0x0b];
            let mut t = match mode {
                0 => TestVm::real_mode(MEM, &code)?,
                1 => {
                    let mut t = TestVm::new(MEM)?;
                    t.mem.write(CODE as usize, &code);
                    let s = labguest::protected_mode(t.vcpu.sregs().ctx("GET_SREGS")?);
                    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
                    let mut r = t.vcpu.regs().ctx("GET_REGS")?;
                    (r.rip, r.rflags) = (CODE, 2);
                    t.vcpu.set_regs(&r).ctx("SET_REGS")?;
                    t
                }
                _ => TestVm::long_mode(MEM, &code)?,
            };
            let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
            s.idt.limit = 0;
            t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
            let _w = Watchdog::start(WATCHDOG);
            let reason = t.run()?;
            ensure!(
                reason == sys::RVMX_EXIT_SHUTDOWN,
                "mode {mode}: {}, want SHUTDOWN",
                t.describe_exit(reason)
            );
            t.vcpu.regs().ctx("GET_REGS after the shutdown")?;
        }
        Ok(())
    })
}

// ---- Interrupt storm ----------------------------------------------------------------

// x2APIC on; R12 counts interrupts (the handler EOIs). Phase 1: IF=1
// until 10 interrupts came (at most 20,000,000 iterations), report R12
// (port 0x10). Phase 2: IF=0 until IRR[95:64] (vectors 0x40-0x5f) shows
// a pending interrupt (same bound), 100,000 more iterations, report R12
// and that IRR word (port 0x14). Phase 3: STI, NOP, NOP, CLI, report R12,
// DONE.
guest!(
    G_STORM,
    "lea rax, [rip + G_STORM_h]",
    "mov qword ptr [0x2f00], rax",
    x2apic_on!(),
    "xor r12d, r12d",
    "sti",
    "mov ecx, 20000000",
    "G_STORM_1:",
    "cmp r12d, 10",
    "jae G_STORM_1e",
    "dec ecx",
    "jnz G_STORM_1",
    "G_STORM_1e:",
    "cli",
    "mov eax, r12d",
    "out 0x10, eax",
    "mov ebx, 20000000",
    "G_STORM_2:",
    "mov ecx, 0x822",
    "rdmsr",
    "test eax, eax",
    "jnz G_STORM_2e",
    "dec ebx",
    "jnz G_STORM_2",
    "G_STORM_2e:",
    "mov r8d, eax",
    "mov ecx, 100000",
    "G_STORM_3:",
    "dec ecx",
    "jnz G_STORM_3",
    "mov eax, r12d",
    "out 0x10, eax",
    "mov eax, r8d",
    "out 0x14, eax",
    "sti",
    "nop",
    "nop",
    "cli",
    "mov eax, r12d",
    "out 0x10, eax",
    "out 0xf4, al",
    "G_STORM_h:",
    "inc r12",
    eoi!(),
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
);

/// How long each burst of the storm lasts (lab time).
const BURST: Duration = Duration::from_millis(100);

/// A thread that sends fixed MSIs to APIC 0 (vectors 0x40-0x4f) as fast
/// as the ioctl goes for `BURST`, from the other CPU if there is one;
/// joins with the number the local APIC accepted.
fn burst(vm_fd: i32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let _ = set_cpu(1.min(crate::irq::online_cpus() - 1));
        let end = Instant::now() + BURST;
        let mut sent = 0u64;
        let mut i = 0u32;
        while Instant::now() < end {
            let mut msi = sys::rvmx_msi {
                address_lo: 0xfee0_0000,
                address_hi: 0,
                data: 0x40 + (i % 16),
                flags: 0,
                pad: [0; 16],
            };
            let arg = &mut msi as *mut sys::rvmx_msi as usize;
            // The VM fd outlives this thread (joined before it drops).
            // Count the MSIs a local APIC accepted (1 each).
            if let Ok(n) = crate::ioctl::raw(&vm_fd, sys::RVMX_SIGNAL_MSI, arg) {
                sent += n as u64;
            }
            i += 1;
        }
        sent
    })
}

fn interrupt_storm(_: &Ctx) -> TestResult {
    watched(|| {
        let mut t = TestVm::long_mode_idt(MEM, code!(G_STORM))?;
        let vm_fd = t.vm.as_raw_fd();
        let _w = Watchdog::start(Duration::from_secs(120));
        let mut counts = Vec::new();
        let mut sent = Vec::new();
        // A burst while the guest runs with IF=1, another while it runs
        // with IF=0 (from its report on), none once it sets IF again.
        let mut storm = Some(burst(vm_fd));
        let mut irr = 0;
        for phase in 0..4 {
            let reason = match t.run() {
                Ok(r) => r,
                Err(e) => {
                    if let Some(s) = storm.take() {
                        let _ = s.join();
                    }
                    return Err(e);
                }
            };
            if reason != sys::RVMX_EXIT_IO {
                if let Some(s) = storm.take() {
                    let _ = s.join();
                }
                return Err(Outcome::Fail(format!(
                    "report {phase}: {}",
                    t.describe_exit(reason)
                )));
            }
            let (p, v) = out_data(&mut t)?;
            if phase == 2 {
                ensure!(p == 0x14, "report {phase}: OUT to {p:#x}, want 0x14");
                irr = v;
                continue;
            }
            ensure!(p == 0x10, "report {phase}: OUT to {p:#x}, want 0x10");
            counts.push(v);
            // The first burst ends with IF=1's phase, the second after the
            // IF=0 phase (before the guest sets IF again).
            if phase < 2 {
                if let Some(s) = storm.take() {
                    sent.push(s.join().unwrap_or(0));
                }
            }
            if phase == 0 {
                storm = Some(burst(vm_fd));
            }
        }
        t.run_to_done()?;
        ensure!(
            sent.len() == 2 && sent.iter().all(|&n| n >= 20),
            "the local APIC accepted {sent:?} MSIs of the two bursts, want >= 20 each"
        );
        ensure!(
            counts[0] >= 10,
            "{} interrupts taken with IF=1 during a burst of {} accepted MSIs, want 10",
            counts[0],
            sent[0]
        );
        ensure!(
            irr & 0xffff != 0,
            "no vector 0x40-0x4f pending in IRR while the guest ran with IF=0 (IRR[95:64] {irr:#x})"
        );
        ensure!(
            counts[1] == counts[0],
            "{} interrupts taken while IF=0",
            counts[1].wrapping_sub(counts[0])
        );
        // After STI only what waited in IRR: at most one per vector.
        let late = counts[2].wrapping_sub(counts[1]);
        ensure!(
            (1..=16).contains(&late),
            "{late} interrupts after STI, want 1 to 16 (one per pending vector)"
        );
        println!(
            "# hostile_interrupt_storm: {sent:?} MSIs accepted; {} taken with IF=1, 0 with IF=0, {late} after STI",
            counts[0]
        );
        Ok(())
    })
}

// ---- Spinning with interrupts off ---------------------------------------------------------

fn cli_spin_stopped_by_signal(_: &Ctx) -> TestResult {
    watched(|| {
        // cli; jmp $
        let mut t = TestVm::long_mode(MEM, &[0xfa, 0xeb, 0xfe])?;
        // SAFETY: pthread_self has no preconditions.
        let kicker = signal_later(unsafe { libc::pthread_self() }, 500);
        let started = Instant::now();
        let result = t.vcpu.run();
        let spun = started.elapsed();
        let _ = kicker.join();
        expect_eintr(&mut t, result, "RUN of a guest spinning with IF=0")?;
        ensure!(
            spun >= Duration::from_millis(500),
            "RUN returned after {spun:?}, before the signal"
        );
        let r = t.vcpu.regs().ctx("GET_REGS")?;
        ensure!(
            r.rip == CODE + 1,
            "RIP {:#x}, want the loop at {:#x}",
            r.rip,
            CODE + 1
        );
        ensure!(
            r.rflags & (1 << 9) == 0,
            "IF set after CLI: {:#x}",
            r.rflags
        );
        Ok(())
    })
}
