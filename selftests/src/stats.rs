//! Tests of the binary statistics files (`RVMX_GET_VM_STATS_FD`,
//! `RVMX_GET_VCPU_STATS_FD`): exact counts for a guest's exits, the VM's
//! sums, the argument and file rules, and the file's lifetime.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use uapi::stats::{Kind, Snapshot, Stats, Unit};
use uapi::sys;

use crate::guest::{TestVm, CODE};
use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::vm::expect_err;
use crate::{ensure, Ctx};
use labguest::{code, eoi, guest, iret64, rdtsc64, set_handler, x2apic_on};

pub const TESTS: &[Test] = &[
    Test {
        name: "stats_count_exactly_a_guests_exits",
        run: stats_count_exactly_a_guests_exits,
    },
    Test {
        name: "stats_count_interrupts_timer_and_halt",
        run: stats_count_interrupts_timer_and_halt,
    },
    Test {
        name: "stats_vm_sums_its_vcpus",
        run: stats_vm_sums_its_vcpus,
    },
    Test {
        name: "stats_fd_rules_and_layout",
        run: stats_fd_rules_and_layout,
    },
    Test {
        name: "stats_fd_outlives_the_vm",
        run: stats_fd_outlives_the_vm,
    },
];

/// How many CPUIDs and port writes `guest_code` makes.
const CPUIDS: u16 = 7;
const OUTS: u16 = 5;

/// Real-mode code: `cpuids` CPUIDs, then `outs` OUTs to port 0x10, then
/// the DONE OUT to 0xf4. SI counts (CPUID overwrites EAX-EDX).
fn guest_code(cpuids: u16, outs: u16) -> Vec<u8> {
    let [c0, c1] = cpuids.to_le_bytes();
    let [o0, o1] = outs.to_le_bytes();
    vec![
        0xbe, c0, c1, // mov si, cpuids
        0x66, 0x31, 0xc0, // 3: xor eax, eax
        0x0f, 0xa2, // cpuid
        0x4e, // dec si
        0x75, 0xf8, // jnz 3
        0xbe, o0, o1, // mov si, outs
        0xe6, 0x10, // 14: out 0x10, al
        0x4e, // dec si
        0x75, 0xfb, // jnz 14
        0xe6, 0xf4, // out 0xf4, al (DONE)
    ]
}

/// Runs a `TestVm` through `guest_code`'s OUTs to its DONE.
fn run_guest(t: &mut TestVm, outs: u16) -> TestResult {
    for i in 0..outs {
        t.run_expect(sys::RVMX_EXIT_IO)?;
        let io = t.io();
        ensure!(io.port == 0x10, "OUT {i}: port {:#x}, want 0x10", io.port);
    }
    t.run_to_done()
}

fn open(file: File, what: &str) -> Result<Stats, Outcome> {
    Stats::new(file).ctx(what)
}

fn value(s: &Stats, snap: &Snapshot, name: &str) -> Result<u64, Outcome> {
    s.get(snap, name)
        .ok_or_else(|| Outcome::Fail(format!("{}: no counter {name}", s.id)))
}

/// Checks `name` is `want` in `snap`.
fn expect(s: &Stats, snap: &Snapshot, name: &str, want: u64) -> TestResult {
    let got = value(s, snap, name)?;
    ensure!(got == want, "{}: {name} = {got}, want {want}", s.id);
    Ok(())
}

fn stats_count_exactly_a_guests_exits(_: &Ctx) -> TestResult {
    let mut t = TestVm::real_mode(0x10000, &guest_code(CPUIDS, OUTS))?;
    let s = open(
        t.vcpu.stats_fd().ctx("RVMX_GET_VCPU_STATS_FD")?,
        "vCPU stats",
    )?;
    let before = s.read().ctx("read")?;
    expect(&s, &before, "exits", 0)?;
    expect(&s, &before, "vmx_windows", 0)?;
    run_guest(&mut t, OUTS)?;
    let snap = s.read().ctx("read")?;
    let io_exits = u64::from(OUTS) + 1;
    expect(&s, &snap, "exit_cpuid", u64::from(CPUIDS))?;
    expect(&s, &snap, "exit_io", io_exits)?;
    expect(&s, &snap, "io_exits", io_exits)?;
    expect(&s, &snap, "exits_to_user", io_exits)?;
    expect(&s, &snap, "mmio_exits", 0)?;
    expect(&s, &snap, "exit_rdmsr", 0)?;
    expect(&s, &snap, "signal_exits", 0)?;
    // Everything else the guest did is handled in the window or ends it
    // for the host (an interrupt, the window's time up).
    let exits = value(&s, &snap, "exits")?;
    let in_window = value(&s, &snap, "exits_in_window")?;
    let to_host = value(&s, &snap, "exits_to_host")?;
    ensure!(
        in_window >= u64::from(CPUIDS),
        "exits_in_window {in_window} < the guest's {CPUIDS} CPUIDs"
    );
    ensure!(
        exits == in_window + to_host + io_exits,
        "exits {exits} != in window {in_window} + to host {to_host} + to user {io_exits}"
    );
    // Each return to user space needs a new window; each window ends
    // with an exit.
    let windows = value(&s, &snap, "vmx_windows")?;
    ensure!(
        (io_exits..=exits).contains(&windows),
        "vmx_windows {windows}, want {io_exits}..={exits}"
    );
    // A second run of the same guest code adds as much again.
    let mut r = t.vcpu.regs().ctx("GET_REGS")?;
    r.rip = CODE;
    t.vcpu.set_regs(&r).ctx("SET_REGS")?;
    run_guest(&mut t, OUTS)?;
    let again = s.read().ctx("read")?;
    expect(&s, &again, "exit_cpuid", 2 * u64::from(CPUIDS))?;
    expect(&s, &again, "io_exits", 2 * io_exits)?;
    // Interrupted runs are counted apart from exits.
    t.vcpu.run_area().immediate_exit = 1;
    let e = t.vcpu.run();
    t.vcpu.run_area().immediate_exit = 0;
    expect_err(e, libc::EINTR, "RUN with immediate_exit")?;
    let last = s.read().ctx("read")?;
    expect(&s, &last, "signal_exits", 1)?;
    expect(&s, &last, "exits_to_user", 2 * io_exits)?;
    Ok(())
}

// With IF=1: three IPIs (vector 0x61) through the x2APIC ICR to all
// including self (messages on the bus, which reach this vCPU alone), one
// through the SELF IPI MSR (delivered inside the local APIC, not a
// message); then a TSC-deadline timer (vector 0x50) 200,000 cycles ahead
// and HLT, which the timer ends; then DONE.
guest!(
    G_STAT,
    set_handler!(G_STAT_h),
    x2apic_on!(),
    "sti",
    "mov r8d, 3",
    "G_STAT_ipi:",
    "mov ecx, 0x830",
    "mov eax, 0x80061",
    "xor edx, edx",
    "wrmsr",
    "dec r8d",
    "jnz G_STAT_ipi",
    "mov ecx, 0x83f",
    "mov eax, 0x62",
    "xor edx, edx",
    "wrmsr",
    "mov ecx, 0x832",
    "mov eax, 0x40050",
    "xor edx, edx",
    "wrmsr",
    rdtsc64!(),
    "add rax, 200000",
    "mov rdx, rax",
    "shr rdx, 32",
    "mov ecx, 0x6e0",
    "wrmsr",
    "hlt",
    "out 0xf4, al",
    "G_STAT_h:",
    eoi!(),
    iret64!(),
);

fn stats_count_interrupts_timer_and_halt(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode_idt(0x20_0000, code!(G_STAT))?;
    let s = open(
        t.vcpu.stats_fd().ctx("RVMX_GET_VCPU_STATS_FD")?,
        "vCPU stats",
    )?;
    t.run_to_done()?;
    let snap = s.read().ctx("read")?;
    expect(&s, &snap, "ipi_sent", 3)?;
    expect(&s, &snap, "ipi_received", 3)?;
    expect(&s, &snap, "timer_expiries", 1)?;
    // Without APIC virtualization rvmx injects all five interrupts; with
    // it, the processor delivers them itself, and the SELF IPI MSR's,
    // virtualized and delivered between two exits, is not seen.
    let injected = value(&s, &snap, "irq_injections")?;
    let virtual_ = value(&s, &snap, "irq_virtual_deliveries")?;
    ensure!(
        if virtual_ == 0 {
            injected == 5
        } else {
            (4..=5).contains(&(injected + virtual_))
        },
        "irq_injections {injected} + irq_virtual_deliveries {virtual_}: want 5 injections without \
         APIC virtualization, 4 or 5 interrupts in all with it"
    );
    expect(&s, &snap, "nmi_injections", 0)?;
    expect(&s, &snap, "inject_exception", 0)?;
    expect(&s, &snap, "exit_hlt", 1)?;
    expect(&s, &snap, "halts", 1)?;
    expect(&s, &snap, "io_exits", 1)?;
    // One halt: it ended in its poll, in one sleep, or at the look just
    // before sleeping (neither).
    let sleeps = value(&s, &snap, "halt_sleeps")?;
    let polled = value(&s, &snap, "halt_successful_poll")?;
    ensure!(
        sleeps + polled <= 1,
        "one halt, but {sleeps} sleeps and {polled} successful polls"
    );
    let ns = value(&s, &snap, "halt_ns")?;
    ensure!(ns > 0, "halt_ns 0 after a halt until a timer");
    Ok(())
}

fn stats_vm_sums_its_vcpus(_: &Ctx) -> TestResult {
    let mut t = TestVm::real_mode(0x10000, &guest_code(CPUIDS, OUTS))?;
    // vCPU 1 runs the same code with other counts, from its own copy.
    const SECOND: u64 = 0x3000;
    let (cpuids1, outs1) = (3u16, 2u16);
    t.mem.write(SECOND as usize, &guest_code(cpuids1, outs1));
    let v1 = t.vm.create_vcpu(1).ctx("vCPU 1")?;
    v1.set_mp_state(sys::RVMX_MP_STATE_RUNNABLE)
        .ctx("vCPU 1 runnable")?;
    let mut sr = v1.sregs().ctx("GET_SREGS")?;
    (sr.cs.selector, sr.cs.base) = (0, 0);
    v1.set_sregs(&sr).ctx("SET_SREGS")?;
    let mut r = v1.regs().ctx("GET_REGS")?;
    (r.rip, r.rflags) = (SECOND, 2);
    v1.set_regs(&r).ctx("SET_REGS")?;
    let vm = open(t.vm.stats_fd().ctx("RVMX_GET_VM_STATS_FD")?, "VM stats")?;
    let s0 = open(t.vcpu.stats_fd().ctx("vCPU 0 stats fd")?, "vCPU 0 stats")?;
    let s1 = open(v1.stats_fd().ctx("vCPU 1 stats fd")?, "vCPU 1 stats")?;
    expect(&vm, &vm.read().ctx("read")?, "vcpus", 2)?;

    run_guest(&mut t, OUTS)?;
    // vCPU 1, on this thread too: its exits are its own.
    let mut t1 = TestVm {
        vm: t.vm,
        vcpu: v1,
        mem: t.mem,
    };
    run_guest(&mut t1, outs1)?;
    let (a, b, v) = (
        s0.read().ctx("read")?,
        s1.read().ctx("read")?,
        vm.read().ctx("read")?,
    );
    expect(&s0, &a, "exit_cpuid", u64::from(CPUIDS))?;
    expect(&s1, &b, "exit_cpuid", u64::from(cpuids1))?;
    expect(&s1, &b, "io_exits", u64::from(outs1) + 1)?;
    expect(&vm, &v, "exit_cpuid", u64::from(CPUIDS + cpuids1))?;
    expect(&vm, &v, "io_exits", u64::from(OUTS + outs1) + 2)?;
    // Every vCPU counter of the VM file is the sum of the vCPUs' (read
    // after both stopped, so nothing moves in between).
    for (name, total) in vm.scalars(&v) {
        let (Some(x), Some(y)) = (s0.get(&a, &name), s1.get(&b, &name)) else {
            continue;
        };
        ensure!(total == x + y, "VM {name} = {total}, vCPUs {x} + {y}");
    }
    // The VM's own counters: one slot (TestVm's) made, no MSI sent.
    expect(&vm, &v, "memory_region_changes", 1)?;
    expect(&vm, &v, "msi_signalled", 0)?;
    ensure!(
        vm.descs.len() > s0.descs.len(),
        "the VM file has no counters of its own"
    );
    drop(t1.vcpu);
    expect(&vm, &vm.read().ctx("read")?, "vcpus", 1)?;
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn stats_fd_rules_and_layout(_: &Ctx) -> TestResult {
    let t = TestVm::real_mode(0x10000, &guest_code(1, 0))?;
    // Reserved argument: EINVAL, on both.
    let vm_fd = t.vm.as_raw_fd();
    let vcpu_fd = t.vcpu.as_raw_fd();
    let raw = |fd, cmd: u32, arg: usize| {
        // SAFETY: an _IO command with an integer argument, on our own fd.
        let r = unsafe { libc::ioctl(fd, cmd as _, arg) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    expect_err(
        raw(vm_fd, sys::RVMX_GET_VM_STATS_FD, 1),
        libc::EINVAL,
        "VM stats fd with argument 1",
    )?;
    expect_err(
        raw(vcpu_fd, sys::RVMX_GET_VCPU_STATS_FD, 1),
        libc::EINVAL,
        "vCPU stats fd with argument 1",
    )?;
    // The VM's number on a vCPU fd (and the reverse) is not theirs.
    expect_err(
        raw(vcpu_fd, sys::RVMX_GET_VM_STATS_FD, 0),
        libc::ENOTTY,
        "VM stats ioctl on a vCPU fd",
    )?;
    expect_err(
        raw(vm_fd, sys::RVMX_GET_VCPU_STATS_FD, 0),
        libc::ENOTTY,
        "vCPU stats ioctl on a VM fd",
    )?;

    let f = t.vcpu.stats_fd().ctx("RVMX_GET_VCPU_STATS_FD")?;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl queries on our own fd.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    ensure!(
        fl & libc::O_ACCMODE == libc::O_RDONLY,
        "stats fd flags {fl:#x}, want O_RDONLY"
    );
    ensure!(fdfl & libc::FD_CLOEXEC != 0, "stats fd without FD_CLOEXEC");
    expect_err(
        std::io::Write::write(&mut &f, &[0]),
        libc::EBADF,
        "write to the stats fd",
    )?;
    expect_err(
        raw(fd, sys::RVMX_RUN, 0),
        libc::ENOTTY,
        "an ioctl on the stats fd",
    )?;
    // SAFETY: a read-only private mapping request on our own fd; it is
    // expected to fail, and unmapped below if it does not.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            fd,
            0,
        )
    };
    let map_errno = std::io::Error::last_os_error().raw_os_error();
    if map != libc::MAP_FAILED {
        // SAFETY: the mapping just made, of that size.
        unsafe { libc::munmap(map, 4096) };
    }
    ensure!(
        map == libc::MAP_FAILED && map_errno == Some(libc::ENODEV),
        "mmap of the stats fd: {map:?}, errno {map_errno:?}, want ENODEV"
    );

    // KVM's layout: header, id string, descriptors, data; 8-aligned.
    let mut h = [0u8; 24];
    ensure!(
        f.read_at(&mut h, 0).ctx("pread header")? == 24,
        "short header"
    );
    let (flags, name_size, num_desc) = (u32_at(&h, 0), u32_at(&h, 4), u32_at(&h, 8));
    let (id_off, desc_off, data_off) = (u32_at(&h, 12), u32_at(&h, 16), u32_at(&h, 20));
    ensure!(flags == 0, "header flags {flags}");
    ensure!(
        name_size == sys::RVMX_STATS_NAME_SIZE,
        "name_size {name_size}"
    );
    ensure!(
        [id_off, desc_off, data_off].iter().all(|o| o % 8 == 0),
        "offsets {id_off} {desc_off} {data_off} not 8-aligned"
    );
    ensure!(
        data_off == desc_off + num_desc * (16 + name_size),
        "data at {data_off}, descriptors at {desc_off}, {num_desc} of them"
    );
    let s = Stats::new(f.try_clone().ctx("dup")?).ctx("decode")?;
    let pid = std::process::id();
    ensure!(
        s.id == format!("rvmx-{pid}/vcpu-0"),
        "vCPU id string {:?}",
        s.id
    );
    let vms = Stats::new(t.vm.stats_fd().ctx("VM stats fd")?).ctx("decode VM")?;
    ensure!(vms.id == format!("rvmx-{pid}"), "VM id string {:?}", vms.id);
    let d = |name: &str| s.descs.iter().find(|d| d.name == name);
    let exits = d("exits").ok_or(Outcome::Fail("no exits counter".into()))?;
    ensure!(
        exits.kind == Kind::Cumulative && exits.unit == Unit::None && exits.size == 1,
        "exits descriptor {exits:?}"
    );
    let halt = d("halt_ns").ok_or(Outcome::Fail("no halt_ns counter".into()))?;
    ensure!(
        halt.unit == Unit::Seconds && halt.exponent == -9,
        "halt_ns descriptor {halt:?}"
    );
    let vcpus = vms.descs.iter().find(|d| d.name == "vcpus");
    ensure!(
        vcpus.is_some_and(|d| d.kind == Kind::Instant),
        "VM vcpus descriptor {vcpus:?}"
    );
    // Reads at any offset and of any length see the same bytes; the end
    // of the file reads 0 bytes.
    let end = data_off as usize + 8 * num_desc as usize;
    let mut all = vec![0u8; end + 100];
    ensure!(
        f.read_at(&mut all, 0).ctx("pread all")? == end,
        "the file is not {end} bytes"
    );
    let mut part = [0u8; 77];
    let at = data_off as usize - 40;
    ensure!(
        f.read_at(&mut part, at as u64)
            .ctx("pread across the data")?
            == 77,
        "short read across the data block"
    );
    ensure!(part[..] == all[at..at + 77], "a read across blocks differs");
    ensure!(
        f.read_at(&mut part, end as u64).ctx("pread at the end")? == 0,
        "reading at the end gave bytes"
    );
    // read(2) goes on from where it stopped.
    let mut seq = f;
    let mut first = [0u8; 30];
    std::io::Read::read_exact(&mut seq, &mut first).ctx("read")?;
    let mut next = [0u8; 30];
    std::io::Read::read_exact(&mut seq, &mut next).ctx("read on")?;
    ensure!(
        first[..] == all[..30] && next[..] == all[30..60],
        "read(2) did not advance"
    );
    Ok(())
}

fn stats_fd_outlives_the_vm(_: &Ctx) -> TestResult {
    let mut t = TestVm::real_mode(0x10000, &guest_code(CPUIDS, OUTS))?;
    let vcpu_file = t.vcpu.stats_fd().ctx("vCPU stats fd")?;
    let vm_file = t.vm.stats_fd().ctx("VM stats fd")?;
    run_guest(&mut t, OUTS)?;
    // Close everything but the stats files: the VM goes (its memory is
    // unpinned), the counters stay readable.
    drop(t);
    let s = open(vcpu_file, "vCPU stats after close")?;
    let snap = s.read().ctx("read after close")?;
    expect(&s, &snap, "exit_cpuid", u64::from(CPUIDS))?;
    let vm = open(vm_file, "VM stats after close")?;
    let v = vm.read().ctx("read VM after close")?;
    expect(&vm, &v, "exit_cpuid", u64::from(CPUIDS))?;
    expect(&vm, &v, "vcpus", 0)?;
    Ok(())
}
