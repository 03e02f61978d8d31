//! Tests of VMs and vCPUs: fds, memory slots, and guests running in each
//! processor mode, each exit kind.

use std::sync::atomic::Ordering;

use uapi::{sys, Rvmx, DEVICE_PATH};

use crate::guest::{region, GuestMem, TestVm, CODE, DONE};
use crate::ioctl::errno_name;
use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::{ensure, Ctx};

pub const TESTS: &[Test] = &[
    Test {
        name: "vm_and_vcpu_fds",
        run: vm_and_vcpu_fds,
    },
    Test {
        name: "fds_from_another_process_are_eio",
        run: fds_from_another_process_are_eio,
    },
    Test {
        name: "memslot_rules",
        run: memslot_rules,
    },
    Test {
        name: "pinned_memory_counts_against_memlock",
        run: pinned_memory_counts_against_memlock,
    },
    Test {
        name: "real_mode_out",
        run: real_mode_out,
    },
    Test {
        name: "protected_mode_out",
        run: protected_mode_out,
    },
    Test {
        name: "long_mode_cpuid_vmcall",
        run: long_mode_cpuid_vmcall,
    },
    Test {
        name: "cpuid_table",
        run: cpuid_table,
    },
    Test {
        name: "msrs",
        run: msrs,
    },
    Test {
        name: "unknown_msrs_fault_or_exit_to_user",
        run: unknown_msrs_fault_or_exit_to_user,
    },
    Test {
        name: "xsetbv_within_the_hosts_xcr0",
        run: xsetbv_within_the_hosts_xcr0,
    },
    Test {
        name: "port_in_completes",
        run: port_in_completes,
    },
    Test {
        name: "triple_fault_is_shutdown",
        run: triple_fault_is_shutdown,
    },
    Test {
        name: "bad_guest_state_fails_entry",
        run: bad_guest_state_fails_entry,
    },
    Test {
        name: "immediate_exit_is_eintr",
        run: immediate_exit_is_eintr,
    },
    Test {
        name: "vms_are_isolated",
        run: vms_are_isolated,
    },
    Test {
        name: "mmio_round_trips",
        run: mmio_round_trips,
    },
    Test {
        name: "rep_ins_outs_across_the_data_area",
        run: rep_ins_outs_across_the_data_area,
    },
    Test {
        name: "readonly_slot_write_is_mmio",
        run: readonly_slot_write_is_mmio,
    },
    Test {
        name: "signal_interrupts_spinning_guest",
        run: signal_interrupts_spinning_guest,
    },
    Test {
        name: "fpu_state_is_isolated",
        run: fpu_state_is_isolated,
    },
    Test {
        name: "host_segment_selectors_survive_exits",
        run: host_segment_selectors_survive_exits,
    },
    Test {
        name: "ioperm_survives_exits",
        run: ioperm_survives_exits,
    },
    Test {
        name: "vcpu_migrates_between_cpus",
        run: vcpu_migrates_between_cpus,
    },
    Test {
        name: "slot_removal_reaches_a_running_vcpu",
        run: slot_removal_reaches_a_running_vcpu,
    },
    Test {
        name: "close_in_any_order_while_running",
        run: close_in_any_order_while_running,
    },
];

pub(crate) fn expect_err<T>(r: std::io::Result<T>, want: i32, what: &str) -> TestResult {
    match r {
        Err(e) if e.raw_os_error() == Some(want) => Ok(()),
        Err(e) => Err(Outcome::Fail(format!(
            "{what}: {e}, want {}",
            errno_name(want)
        ))),
        Ok(_) => Err(Outcome::Fail(format!(
            "{what}: succeeded, want {}",
            errno_name(want)
        ))),
    }
}

fn vm_and_vcpu_fds(_: &Ctx) -> TestResult {
    let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
    let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
    // SAFETY: F_GETFD on our own fd.
    let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&vm), libc::F_GETFD) };
    ensure!(flags & libc::FD_CLOEXEC != 0, "VM fd without FD_CLOEXEC");
    let v0 = vm.create_vcpu(0).ctx("vCPU 0")?;
    expect_err(vm.create_vcpu(0), libc::EEXIST, "vCPU 0 again")?;
    expect_err(
        vm.create_vcpu(sys::RVMX_MAX_VCPUS),
        libc::EINVAL,
        "vCPU id beyond the limit",
    )?;
    let v1 = vm.create_vcpu(1).ctx("vCPU 1")?;
    // Closing the VM fd first leaves the vCPUs working.
    drop(vm);
    v1.regs().ctx("GET_REGS after the VM fd was closed")?;
    drop(v0);
    drop(v1);
    Ok(())
}

/// In a child that gave up root (and with it CAP_IPC_LOCK) under a 64 KiB
/// RLIMIT_MEMLOCK: a 1 MiB slot does not fit (ENOMEM), a 32 KiB one does,
/// and deleting it gives the room back.
fn pinned_memory_counts_against_memlock(_: &Ctx) -> TestResult {
    let big = GuestMem::new(0x10_0000).ctx("mmap")?;
    // SAFETY: the child only makes system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // Its own VM: a VM answers only the process that made it.
        let Ok(vm) = Rvmx::open(DEVICE_PATH).and_then(|r| r.create_vm()) else {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(6) };
        };
        let limit = libc::rlimit {
            rlim_cur: 0x1_0000,
            rlim_max: 0x1_0000,
        };
        let slot = |n: u32, size: u64| {
            // SAFETY: `big` stays mapped in the child until it exits.
            unsafe { vm.set_user_memory_region(region(n, 0, size, big.addr(), 0)) }
                .map_err(|e| e.raw_os_error())
        };
        // SAFETY: setrlimit and setuid change only this process.
        let code = if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0
            || unsafe { libc::setuid(65534) } != 0
        {
            2
        } else if slot(0, 0x10_0000) != Err(Some(libc::ENOMEM)) {
            3
        } else if slot(0, 0x8000).is_err() || slot(0, 0).is_err() {
            4
        } else if slot(1, 0x8000).is_err() {
            5
        } else {
            0
        };
        // SAFETY: leaving the child at once.
        unsafe { libc::_exit(code) };
    }
    ensure!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let why = match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => return Ok(()),
        (true, 2) => "setrlimit/setuid failed",
        (true, 3) => "a 1 MiB slot under a 64 KiB RLIMIT_MEMLOCK was not refused with ENOMEM",
        (true, 4) => "a 32 KiB slot under a 64 KiB RLIMIT_MEMLOCK failed, or its deletion",
        (true, 5) => "deleting a slot did not give its locked memory back",
        (true, 6) => "the child could not make a VM",
        _ => "the child died",
    };
    Err(Outcome::Fail(format!("{why} (status {status:#x})")))
}

fn memslot_rules(_: &Ctx) -> TestResult {
    let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
    let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
    let mem = GuestMem::new(0x10_0000).ctx("mmap")?;
    let a = mem.addr();
    // SAFETY (all calls): `mem` outlives the VM and is used only by it.
    let set = |slot, gpa, size, uaddr, flags| unsafe {
        vm.set_user_memory_region(region(slot, gpa, size, uaddr, flags))
    };
    set(0, 0, 0x8000, a, 0).ctx("slot 0")?;
    expect_err(
        set(1, 0x1000, 0x1000, a + 0x8000, 0),
        libc::EEXIST,
        "overlapping slot",
    )?;
    expect_err(
        set(1, 0x8800, 0x1000, a + 0x8000, 0),
        libc::EINVAL,
        "unaligned guest address",
    )?;
    expect_err(
        set(1, 0x8000, 0x1800, a + 0x8000, 0),
        libc::EINVAL,
        "unaligned size",
    )?;
    expect_err(
        set(1, 0x8000, 0x1000, a + 0x8010, 0),
        libc::EINVAL,
        "unaligned user address",
    )?;
    expect_err(
        set(1, !0xfff, 0x2000, a, 0),
        libc::EINVAL,
        "wrapping guest range",
    )?;
    expect_err(set(1, 0x8000, 0x1000, a, 1), libc::EINVAL, "unknown flag")?;
    expect_err(
        set(sys::RVMX_MAX_MEM_SLOTS, 0x8000, 0x1000, a, 0),
        libc::EINVAL,
        "slot number",
    )?;
    expect_err(
        set(1, 0x8000, 0x1000, 0x1000, 0),
        libc::EFAULT,
        "unmapped user memory",
    )?;
    expect_err(set(0, 0x1000, 0x8000, a, 0), libc::EINVAL, "moving a slot")?;
    set(0, 0, 0x8000, a, sys::RVMX_MEM_READONLY).ctx("making slot 0 read-only")?;
    set(0, 0, 0x8000, a, 0).ctx("making slot 0 writable again")?;
    set(1, 0x8000, 0x8000, a + 0x8000, 0).ctx("adjacent slot 1")?;
    set(0, 0, 0, 0, 0).ctx("deleting slot 0")?;
    expect_err(set(0, 0, 0, 0, 0), libc::EINVAL, "deleting it again")?;
    set(2, 0, 0x8000, a, 0).ctx("reusing the freed range")?;
    Ok(())
}

fn real_mode_out(_: &Ctx) -> TestResult {
    // mov al, 0x42; out 0x10, al; mov dx, 0x3f8; mov ax, 0x1234; out dx, ax; done
    let code = [
        0xb0, 0x42, 0xe6, 0x10, 0xba, 0xf8, 0x03, 0xb8, 0x34, 0x12, 0x66, 0xef, 0xe6, 0xf4,
    ];
    let mut t = TestVm::real_mode(0x10000, &code)?;
    expect_io(&mut t, 0x10, 1, 1, true)?;
    ensure!(io_data(&mut t, 1)? == [0x42], "OUT data, want 0x42");
    // 66 ef in real mode: a 32-bit OUT.
    expect_io(&mut t, 0x3f8, 4, 1, true)?;
    ensure!(io_data(&mut t, 4)? == [0x34, 0x12, 0, 0], "32-bit OUT data");
    t.run_to_done()?;
    let rip = t.vcpu.regs().ctx("GET_REGS")?.rip;
    ensure!(
        rip == CODE + code.len() as u64,
        "RIP after the last OUT {rip:#x}"
    );
    Ok(())
}

fn long_mode_cpuid_vmcall(_: &Ctx) -> TestResult {
    // mov eax, 1; cpuid; mov rbx, rcx (ECX of leaf 1); mov rax, 0x1234;
    // mov rcx, 0x5678; vmcall; done
    let code = [
        0xb8, 1, 0, 0, 0, 0x0f, 0xa2, 0x48, 0x89, 0xcb, 0x48, 0xc7, 0xc0, 0x34, 0x12, 0, 0, 0x48,
        0xc7, 0xc1, 0x78, 0x56, 0, 0, 0x0f, 0x01, 0xc1, 0xe6, 0xf4,
    ];
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    t.run_expect(sys::RVMX_EXIT_HYPERCALL)?;
    // SAFETY: the exit reason says the union holds `hypercall`.
    let call = unsafe { t.vcpu.run_area().__bindgen_anon_1.hypercall };
    ensure!(call.nr == 0x1234, "hypercall nr {:#x}", call.nr);
    ensure!(
        call.flags == u64::from(sys::RVMX_EXIT_HYPERCALL_LONG_MODE),
        "hypercall flags {:#x}, want LONG_MODE only (64-bit code at CPL 0)",
        call.flags
    );
    let ecx = call.args[0];
    ensure!(
        ecx & (1 << 31) != 0,
        "CPUID.1:ECX {ecx:#x} lacks the hypervisor bit"
    );
    ensure!(
        ecx & (1 << 5) == 0,
        "CPUID.1:ECX {ecx:#x} shows VMX to the guest"
    );
    ensure!(
        call.args[1] == 0x5678,
        "hypercall arg 1 (RCX) {:#x}",
        call.args[1]
    );
    t.vcpu.run_area().__bindgen_anon_1.hypercall.ret = 0xabcd;
    t.run_to_done()?;
    let regs = t.vcpu.regs().ctx("GET_REGS")?;
    ensure!(
        regs.rax == 0xabcd,
        "RAX after the hypercall {:#x}, want its ret 0xabcd",
        regs.rax
    );
    let sregs = t.vcpu.sregs().ctx("GET_SREGS")?;
    ensure!(
        sregs.efer & (1 << 10) != 0,
        "EFER {:#x} without LMA in long mode",
        sregs.efer
    );
    Ok(())
}

fn port_in_completes(_: &Ctx) -> TestResult {
    // mov eax, 0xffffffff (real mode: 66 b8); in al, 0x60; in ax, dx (dx=0x71); done
    let code = [
        0x66, 0xb8, 0xff, 0xff, 0xff, 0xff, 0xe4, 0x60, 0xba, 0x71, 0, 0xed, 0xe6, 0xf4,
    ];
    let mut t = TestVm::real_mode(0x10000, &code)?;
    expect_io(&mut t, 0x60, 1, 1, false)?;
    fill_io(&mut t, &[0x5a]);
    // Running on completes the first IN.
    expect_io(&mut t, 0x71, 2, 1, false)?;
    let rax = t.vcpu.regs().ctx("GET_REGS")?.rax;
    ensure!(
        rax == 0xffff_ff5a,
        "RAX after IN AL {rax:#x}, want 0xffffff5a (upper bytes kept)"
    );
    fill_io(&mut t, &[0x22, 0x11]);
    t.run_to_done()?;
    let rax = t.vcpu.regs().ctx("GET_REGS")?.rax;
    ensure!(
        rax == 0xffff_1122,
        "RAX after IN AX {rax:#x}, want 0xffff1122"
    );
    Ok(())
}

/// Puts `data` where the current IN exit expects it.
fn fill_io(t: &mut TestVm, data: &[u8]) {
    let io = t.io();
    if let Some(d) = t.vcpu.run_data(io.data_offset, data.len()) {
        d.copy_from_slice(data);
    }
}

fn triple_fault_is_shutdown(_: &Ctx) -> TestResult {
    // lidt [zero-limit descriptor at 0x2000]; int3: no IDT → triple fault.
    let code = [0x0f, 0x01, 0x1e, 0x00, 0x20, 0xcc];
    let mut t = TestVm::real_mode(0x10000, &code)?;
    t.mem.write(0x2000, &[0; 6]);
    t.run_expect(sys::RVMX_EXIT_SHUTDOWN)
}

fn bad_guest_state_fails_entry(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode(0x20_0000, &DONE)?;
    // A 64-bit code segment with CS.D set is invalid guest state.
    let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
    s.cs.db = 1;
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    t.run_expect(sys::RVMX_EXIT_FAIL_ENTRY)?;
    // SAFETY: the exit reason says the union holds `fail_entry`.
    let f = unsafe { t.vcpu.run_area().__bindgen_anon_1.fail_entry };
    ensure!(
        f.hardware_entry_failure_reason == 33,
        "entry failure reason {}, want 33 (invalid guest state)",
        f.hardware_entry_failure_reason
    );
    // The host is fine and so is the vCPU once its state is repaired.
    s.cs.db = 0;
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    t.run_to_done()
}

fn immediate_exit_is_eintr(_: &Ctx) -> TestResult {
    let mut t = TestVm::real_mode(0x10000, &DONE)?;
    t.vcpu.run_area().immediate_exit = 1;
    let result = t.vcpu.run();
    expect_eintr(&mut t, result, "RUN with immediate_exit")?;
    t.vcpu.run_area().immediate_exit = 0;
    t.run_to_done()
}

fn vms_are_isolated(_: &Ctx) -> TestResult {
    // Each guest writes its own marker at 0x3000 and reads 0x3000 of the
    // other VM's... which it cannot address: it sees only its own memory.
    // mov rax, [0x3000]; mov [0x3008], rax; mov dword [0x3000], imm; done
    let code = |marker: u8| {
        vec![
            0x48, 0x8b, 0x04, 0x25, 0, 0x30, 0, 0, 0x48, 0x89, 0x04, 0x25, 8, 0x30, 0, 0, 0xc7,
            0x04, 0x25, 0, 0x30, 0, 0, marker, 0, 0, 0, 0xe6, 0xf4,
        ]
    };
    let mut a = TestVm::long_mode(0x20_0000, &code(0xaa))?;
    let mut b = TestVm::long_mode(0x20_0000, &code(0xbb))?;
    a.mem.write_u64(0x3000, 0x1111);
    b.mem.write_u64(0x3000, 0x2222);
    a.run_to_done()?;
    b.run_to_done()?;
    let (a_saw, b_saw) = (a.mem.read_u64(0x3008), b.mem.read_u64(0x3008));
    ensure!(
        a_saw == 0x1111 && b_saw == 0x2222,
        "guests read {a_saw:#x} and {b_saw:#x}, want their own 0x1111/0x2222"
    );
    let (a_now, b_now) = (a.mem.read_u64(0x3000), b.mem.read_u64(0x3000));
    ensure!(
        a_now == 0xaa && b_now == 0xbb,
        "markers {a_now:#x} {b_now:#x}: a guest wrote the other's memory"
    );
    Ok(())
}

/// Emits `mov rbx, imm64`.
fn mov_rbx(imm: u64) -> Vec<u8> {
    let mut v = vec![0x48, 0xbb];
    v.extend_from_slice(&imm.to_le_bytes());
    v
}

fn mmio(t: &mut TestVm) -> sys::rvmx_exit_mmio {
    // SAFETY: callers check the exit reason first.
    unsafe { t.vcpu.run_area().__bindgen_anon_1.mmio }
}

fn expect_mmio(t: &mut TestVm, gpa: u64, len: u32, write: Option<u64>) -> TestResult {
    t.run_expect(sys::RVMX_EXIT_MMIO)?;
    let m = mmio(t);
    ensure!(
        m.phys_addr == gpa && m.len == len,
        "MMIO at {:#x} len {}, want {gpa:#x} len {len}",
        m.phys_addr,
        m.len
    );
    ensure!(
        (m.is_write != 0) == write.is_some(),
        "MMIO is_write {}, want {}",
        m.is_write,
        write.is_some()
    );
    if let Some(value) = write {
        let got = u64::from_le_bytes(m.data);
        ensure!(got == value, "MMIO write data {got:#x}, want {value:#x}");
    }
    Ok(())
}

fn mmio_round_trips(_: &Ctx) -> TestResult {
    const BAR: u64 = 0x1000_0000;
    let mut code = mov_rbx(BAR);
    code.extend_from_slice(&[
        0xc6, 0x03, 0x11, // mov byte [rbx], 0x11
        0x66, 0xc7, 0x43, 0x02, 0x22, 0x22, // mov word [rbx+2], 0x2222
        0xc7, 0x43, 0x04, 0x33, 0x33, 0x33, 0x33, // mov dword [rbx+4], 0x33333333
        0x48, 0xb8, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, // mov rax, 0x4444...
        0x48, 0x89, 0x43, 0x08, // mov [rbx+8], rax
        0x48, 0xc7, 0xc1, 0xff, 0xff, 0xff, 0xff, // mov rcx, -1
        0x48, 0xc7, 0xc2, 0xff, 0xff, 0xff, 0xff, // mov rdx, -1
        0x48, 0xc7, 0xc6, 0xff, 0xff, 0xff, 0xff, // mov rsi, -1
        0x8a, 0x0b, // mov cl, [rbx]
        0x66, 0x8b, 0x53, 0x02, // mov dx, [rbx+2]
        0x8b, 0x73, 0x04, // mov esi, [rbx+4]
        0x48, 0x8b, 0x7b, 0x08, // mov rdi, [rbx+8]
        0x44, 0x0f, 0xb6, 0x03, // movzx r8d, byte [rbx]
        0xe6, 0xf4,
    ]);
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    expect_mmio(&mut t, BAR, 1, Some(0x11))?;
    expect_mmio(&mut t, BAR + 2, 2, Some(0x2222))?;
    expect_mmio(&mut t, BAR + 4, 4, Some(0x3333_3333))?;
    expect_mmio(&mut t, BAR + 8, 8, Some(0x4444_4444_4444_4444))?;
    for (gpa, len, value) in [
        (BAR, 1, 0x55u64),
        (BAR + 2, 2, 0x6666),
        (BAR + 4, 4, 0x7777_7777),
        (BAR + 8, 8, 0x8888_8888_8888_8888),
        (BAR, 1, 0x99),
    ] {
        expect_mmio(&mut t, gpa, len, None)?;
        t.vcpu.run_area().__bindgen_anon_1.mmio.data = value.to_le_bytes();
    }
    t.run_to_done()?;
    let r = t.vcpu.regs().ctx("GET_REGS")?;
    ensure!(
        r.rcx == 0xffff_ffff_ffff_ff55,
        "RCX {:#x}: MOV CL must merge",
        r.rcx
    );
    ensure!(
        r.rdx == 0xffff_ffff_ffff_6666,
        "RDX {:#x}: MOV DX must merge",
        r.rdx
    );
    ensure!(
        r.rsi == 0x7777_7777,
        "RSI {:#x}: MOV ESI must zero-extend",
        r.rsi
    );
    ensure!(r.rdi == 0x8888_8888_8888_8888, "RDI {:#x}", r.rdi);
    ensure!(r.r8 == 0x99, "R8 {:#x}: MOVZX", r.r8);
    Ok(())
}

fn readonly_slot_write_is_mmio(_: &Ctx) -> TestResult {
    const ROM: u64 = 0x40_0000;
    // mov rax, [rbx]; inc rax; mov [rbx], rax; done
    let mut code = mov_rbx(ROM);
    code.extend_from_slice(&[
        0x48, 0x8b, 0x03, 0x48, 0xff, 0xc0, 0x48, 0x89, 0x03, 0xe6, 0xf4,
    ]);
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    let mut rom = GuestMem::new(0x1000).ctx("mmap")?;
    rom.write_u64(0, 0x1234);
    // SAFETY: `rom` outlives the VM (dropped after `t` at the end of scope).
    unsafe {
        t.vm.set_user_memory_region(region(1, ROM, 0x1000, rom.addr(), sys::RVMX_MEM_READONLY))
    }
    .ctx("read-only slot")?;
    expect_mmio(&mut t, ROM, 8, Some(0x1235))?;
    t.run_to_done()?;
    ensure!(
        rom.read_u64(0) == 0x1234,
        "the guest wrote a read-only slot: {:#x}",
        rom.read_u64(0)
    );
    let rax = t.vcpu.regs().ctx("GET_REGS")?.rax;
    ensure!(
        rax == 0x1235,
        "RAX {rax:#x}: the guest did not read the slot"
    );
    drop(t);
    Ok(())
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs a handler for SIGUSR1 (without SA_RESTART) so it interrupts
/// RVMX_RUN instead of killing the process.
pub(crate) fn catch_sigusr1() {
    // SAFETY: a plain handler that does nothing; sigaction copies the struct.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore_signal as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

/// Sends SIGUSR1 to `thread` after `ms` milliseconds, from another thread.
pub(crate) fn signal_later(thread: libc::pthread_t, ms: u64) -> std::thread::JoinHandle<()> {
    let thread = thread as usize;
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        // SAFETY: the target thread outlives this (it is joined after).
        unsafe { libc::pthread_kill(thread as libc::pthread_t, libc::SIGUSR1) };
    })
}

fn signal_interrupts_spinning_guest(_: &Ctx) -> TestResult {
    catch_sigusr1();
    // jmp $
    let mut t = TestVm::real_mode(0x10000, &[0xeb, 0xfe])?;
    // SAFETY: pthread_self has no preconditions.
    let kicker = signal_later(unsafe { libc::pthread_self() }, 300);
    let result = t.vcpu.run();
    let _ = kicker.join();
    expect_eintr(&mut t, result, "RUN of a spinning guest after a signal")?;
    let rip = t.vcpu.regs().ctx("GET_REGS")?.rip;
    ensure!(rip == CODE, "RIP {rip:#x}: the guest left its loop");
    Ok(())
}

/// GS's selector on this thread.
fn gs_selector() -> u16 {
    let gs: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { std::arch::asm!("mov {0:x}, gs", out(reg) gs, options(nomem, nostack)) };
    gs
}

/// Loads GS with `sel`. Rust's TLS is FS-based, so GS is free to use here.
fn load_gs(sel: u16) {
    // SAFETY: `sel` is null or the user data selector (SS's), both valid
    // for GS at CPL 3; nothing on this thread uses GS's base.
    unsafe { std::arch::asm!("mov gs, {0:x}", in(reg) sel, options(nomem, nostack)) };
}

fn host_segment_selectors_survive_exits(_: &Ctx) -> TestResult {
    // A VM exit loads the host's selectors from the VMCS, where a user
    // selector (RPL 3) cannot be: rvmx must put the task's back.
    let ss: u16;
    // SAFETY: as in `gs_selector`.
    unsafe { std::arch::asm!("mov {0:x}, ss", out(reg) ss, options(nomem, nostack)) };
    let mut t = TestVm::real_mode(0x10000, &[0xe6, 0x10, 0xe6, 0xf4])?;
    load_gs(ss);
    let result = expect_io(&mut t, 0x10, 1, 1, true).and_then(|()| t.run_to_done());
    let gs = gs_selector();
    load_gs(0);
    result?;
    ensure!(
        gs == ss,
        "GS selector {gs:#x} after the guest's exits, want the task's {ss:#x}"
    );
    Ok(())
}

/// `in al, 0x80` from user space: allowed only through ioperm(), whose
/// bitmap lies past the TSS limit a VM exit leaves.
fn read_port_80() {
    // SAFETY: port 0x80 (POST codes) has no effect on reads; without
    // permission the CPU raises #GP (SIGSEGV), which the caller expects.
    unsafe { std::arch::asm!("in al, 0x80", out("al") _, options(nomem, nostack)) };
}

fn ioperm_survives_exits(_: &Ctx) -> TestResult {
    // SAFETY: ioperm(2) only changes this process's I/O permissions.
    if unsafe { libc::ioperm(0x80, 1, 1) } != 0 {
        return Err(Outcome::Skip(format!(
            "ioperm: {} (a kernel without CONFIG_X86_IOPL_IOPERM)",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: undoes the ioperm above.
    unsafe { libc::ioperm(0x80, 1, 0) };
    // In a child, since a lost I/O bitmap kills the task with SIGSEGV; the
    // child makes its own VM (the parent's fds are EIO there).
    // SAFETY: the child runs only this test's code and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        let code = if unsafe { libc::ioperm(0x80, 1, 1) } != 0 {
            2
        } else {
            read_port_80();
            let ran = TestVm::real_mode(0x10000, &[0xe6, 0x10, 0xe6, 0xf4]).is_ok_and(|mut t| {
                expect_io(&mut t, 0x10, 1, 1, true).is_ok() && t.run_to_done().is_ok()
            });
            read_port_80();
            if ran {
                0
            } else {
                3
            }
        };
        // SAFETY: leaving the child at once.
        unsafe { libc::_exit(code) };
    }
    ensure!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    ensure!(
        !libc::WIFSIGNALED(status),
        "port I/O allowed by ioperm() faulted after the guest ran (signal {}): the TSS's I/O bitmap was cut off",
        libc::WTERMSIG(status)
    );
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's guest did not run (status {status:#x})"
    );
    Ok(())
}

fn fpu_state_is_isolated(_: &Ctx) -> TestResult {
    // Guest: xmm0 = 0x1111 (movq xmm0, rax), exit with OUT, then on return
    // check xmm0 still holds it and report via the next OUT's data.
    let code = [
        0x48, 0xc7, 0xc0, 0x11, 0x11, 0, 0, // mov rax, 0x1111
        0x66, 0x48, 0x0f, 0x6e, 0xc0, // movq xmm0, rax
        0xe6, 0x10, // out 0x10, al
        0x66, 0x48, 0x0f, 0x7e, 0xc0, // movq rax, xmm0
        0xe7, 0x11, // out 0x11, eax
        0xe6, 0xf4,
    ];
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
    s.cr4 |= (1 << 9) | (1 << 10); // OSFXSR, OSXMMEXCPT
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&t.vcpu);
    let host_xmm: u64 = 0x5a5a_0000_7777;
    let (ret, xmm0_after, xmm15_after): (i64, u64, u64);
    // SAFETY: a raw ioctl(fd, RVMX_RUN) system call; the asm declares
    // every register the syscall or the moves clobber.
    unsafe {
        std::arch::asm!(
            "movq xmm0, {v}",
            "movq xmm15, {v}",
            "syscall",
            "movq {a}, xmm0",
            "movq {b}, xmm15",
            v = in(reg) host_xmm,
            a = out(reg) xmm0_after,
            b = out(reg) xmm15_after,
            inlateout("rax") libc::SYS_ioctl => ret,
            in("rdi") fd,
            in("rsi") sys::RVMX_RUN as u64,
            in("rdx") 0u64,
            out("rcx") _, out("r11") _, out("xmm0") _, out("xmm15") _,
        );
    }
    ensure!(ret == 0, "RVMX_RUN returned {ret}");
    ensure!(xmm0_after == host_xmm && xmm15_after == host_xmm,
        "the VMM's xmm0/xmm15 changed across RVMX_RUN: {xmm0_after:#x}/{xmm15_after:#x}, want {host_xmm:#x}");
    let io = t.io();
    ensure!(io.port == 0x10, "first exit {io:?}");
    // The VMM now uses vector registers freely (this formatting and copying
    // does), then resumes the guest, whose xmm0 must be intact.
    let noise: Vec<String> = (0..64).map(|i| format!("{i:08}")).collect();
    ensure!(noise.len() == 64, "noise");
    t.run_expect(sys::RVMX_EXIT_IO)?;
    let io = t.io();
    let data = t
        .vcpu
        .run_data(io.data_offset, 4)
        .unwrap_or_default()
        .to_vec();
    ensure!(
        io.port == 0x11 && data == [0x11, 0x11, 0, 0],
        "guest xmm0 after an exit to the VMM: {data:x?}"
    );
    Ok(())
}

pub(crate) fn set_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn slot_removal_reaches_a_running_vcpu(_: &Ctx) -> TestResult {
    // SAFETY: sysconf has no preconditions.
    if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
        return Err(Outcome::Skip(
            "needs 2 online CPUs (scripts/lab run --cpus 2)".into(),
        ));
    }
    // out 0x10, al; loop: mov rax, [0x400000]; jmp loop
    let mut t = TestVm::long_mode(
        0x20_0000,
        &[
            0xe6, 0x10, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0x40, 0, 0xeb, 0xf6,
        ],
    )?;
    let mut page = GuestMem::new(0x1000).ctx("mmap")?;
    // SAFETY: `page` outlives the slot, which the test deletes.
    unsafe {
        t.vm.set_user_memory_region(region(1, 0x40_0000, 0x1000, page.addr(), 0))
    }
    .ctx("SET_USER_MEMORY_REGION slot 1")?;
    page.write_u64(0, 0x1234);
    expect_io(&mut t, 0x10, 1, 1, true)?;
    // The guest now reads the slot in a loop, on CPU 1. Deleting the slot
    // from CPU 0 must reach that CPU: afterwards its next read exits as
    // MMIO, instead of going on through a stale translation to a page
    // rvmx no longer holds.
    let (vm, vcpu) = (&t.vm, &mut t.vcpu);
    let runner_thread = std::sync::atomic::AtomicUsize::new(0);
    let outcome = std::thread::scope(|s| {
        let tid = &runner_thread;
        let runner = s.spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tid.store(unsafe { libc::pthread_self() } as usize, Ordering::SeqCst);
            set_cpu(1).ctx("sched_setaffinity")?;
            vcpu.run().ctx("RVMX_RUN")?;
            Ok::<_, Outcome>(vcpu.run_area().exit_reason)
        });
        set_cpu(0).ctx("sched_setaffinity")?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        // SAFETY: deleting a slot does not touch user memory.
        unsafe { vm.set_user_memory_region(region(1, 0x40_0000, 0, page.addr(), 0)) }
            .ctx("deleting slot 1")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !runner.is_finished() {
            if std::time::Instant::now() > deadline {
                // The guest still reads memory that is gone: a signal ends
                // its run, and the test.
                let thread = runner_thread.load(Ordering::SeqCst) as libc::pthread_t;
                // SAFETY: the thread is alive (not finished) and SIGUSR1
                // has a handler (`catch_sigusr1`).
                unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
                let _ = runner.join();
                return Err(Outcome::Fail(
                    "the vCPU kept running 20 s after its slot was deleted".into(),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        runner
            .join()
            .map_err(|_| Outcome::Fail("the vCPU thread panicked".into()))?
    });
    // Let this thread run anywhere again.
    let _ = restore_affinity();
    let reason = outcome?;
    ensure!(
        reason == sys::RVMX_EXIT_MMIO,
        "exit {reason} after the slot was deleted, want RVMX_EXIT_MMIO"
    );
    let m = mmio(&mut t);
    ensure!(
        m.phys_addr == 0x40_0000 && m.is_write == 0,
        "MMIO exit at {:#x} (write {}), want a read of 0x400000",
        m.phys_addr,
        m.is_write
    );
    Ok(())
}

/// Allows this thread on every online CPU again.
fn restore_affinity() -> Result<(), ()> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as usize;
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..n {
            libc::CPU_SET(cpu, &mut set);
        }
        (libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0)
            .then_some(())
            .ok_or(())
    }
}

fn vcpu_migrates_between_cpus(_: &Ctx) -> TestResult {
    // SAFETY: sysconf has no preconditions.
    if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
        return Err(Outcome::Skip(
            "needs 2 online CPUs (scripts/lab run --cpus 2)".into(),
        ));
    }
    // loop: inc rbx; mov eax, ebx; out 0x10, eax; jmp loop
    let mut t = TestVm::long_mode(
        0x20_0000,
        &[0x48, 0xff, 0xc3, 0x89, 0xd8, 0xe7, 0x10, 0xeb, 0xf7],
    )?;
    let result = (|| {
        for i in 1..=40u32 {
            set_cpu((i % 2) as usize).ctx("sched_setaffinity")?;
            t.run_expect(sys::RVMX_EXIT_IO)?;
            let io = t.io();
            let data = t
                .vcpu
                .run_data(io.data_offset, 4)
                .unwrap_or_default()
                .to_vec();
            ensure!(
                data == i.to_le_bytes(),
                "exit {i} on CPU {}: the guest counted {data:x?}",
                i % 2
            );
        }
        Ok(())
    })();
    ensure!(
        restore_affinity().is_ok(),
        "restoring the CPU affinity failed"
    );
    result
}

fn close_in_any_order_while_running(_: &Ctx) -> TestResult {
    catch_sigusr1();
    // Three orders: VM fd first, vCPU fd first, /dev/rvmx first; each while
    // another thread has the vCPU in the guest (spinning).
    for order in 0..3 {
        let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
        let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
        let mut mem = GuestMem::new(0x10000).ctx("mmap")?;
        mem.write(CODE as usize, &[0xeb, 0xfe]);
        // SAFETY: `mem` outlives the thread below (joined before it drops).
        unsafe { vm.set_user_memory_region(region(0, 0, 0x10000, mem.addr(), 0)) }.ctx("slot")?;
        let mut vcpu = vm.create_vcpu(0).ctx("vCPU")?;
        let mut s = vcpu.sregs().ctx("GET_SREGS")?;
        (s.cs.selector, s.cs.base) = (0, 0);
        vcpu.set_sregs(&s).ctx("SET_SREGS")?;
        let mut r = vcpu.regs().ctx("GET_REGS")?;
        r.rip = CODE;
        vcpu.set_regs(&r).ctx("SET_REGS")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let runner = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            let _ = tx.send(unsafe { libc::pthread_self() } as usize);
            let result = vcpu.run();
            drop(vcpu);
            result
        });
        let thread = rx
            .recv()
            .map_err(|_| Outcome::Fail("runner thread died".into()))?;
        std::thread::sleep(std::time::Duration::from_millis(200));
        match order {
            0 => drop(vm),
            1 => drop(rvmx),
            _ => {}
        }
        let kicker = signal_later(thread as libc::pthread_t, 100);
        let result = runner
            .join()
            .map_err(|_| Outcome::Fail("runner panicked".into()))?;
        let _ = kicker.join();
        match result {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            other => {
                return Err(Outcome::Fail(format!(
                    "order {order}: RUN ended with {other:?}, want EINTR"
                )))
            }
        }
        drop(mem);
    }
    Ok(())
}

/// The data of the current IO exit, `len` bytes.
fn io_data(t: &mut TestVm, len: usize) -> Result<Vec<u8>, Outcome> {
    let io = t.io();
    t.vcpu
        .run_data(io.data_offset, len)
        .map(|d| d.to_vec())
        .ok_or_else(|| {
            Outcome::Fail(format!(
                "data offset {} + {len} outside the run area",
                io.data_offset
            ))
        })
}

fn expect_io(t: &mut TestVm, port: u16, size: u8, count: u32, out: bool) -> TestResult {
    t.run_expect(sys::RVMX_EXIT_IO)?;
    let io = t.io();
    let dir = if out {
        sys::RVMX_EXIT_IO_OUT
    } else {
        sys::RVMX_EXIT_IO_IN
    } as u8;
    ensure!(
        io.port == port && io.size == size && io.count == count && io.direction == dir,
        "exit {io:?}, want port {port:#x} size {size} count {count} out {out}"
    );
    Ok(())
}

fn rep_ins_outs_across_the_data_area(_: &Ctx) -> TestResult {
    let code = [
        0x48, 0xc7, 0xc6, 0x00, 0x40, 0, 0, // mov rsi, 0x4000
        0xb9, 0xb8, 0x0b, 0, 0, // mov ecx, 3000
        0x66, 0xba, 0x80, 0,    // mov dx, 0x80
        0xfc, // cld
        0xf3, 0x6e, // rep outsb
        0x48, 0xc7, 0xc7, 0x00, 0x80, 0, 0, // mov rdi, 0x8000
        0xb9, 0xdc, 0x05, 0, 0, // mov ecx, 1500
        0x66, 0xba, 0x82, 0, // mov dx, 0x82
        0xf3, 0x66, 0x6d, // rep insw
        0xfd, // std
        0x48, 0xc7, 0xc6, 0x0c, 0x40, 0, 0, // mov rsi, 0x400c
        0xb9, 0x04, 0, 0, 0, // mov ecx, 4
        0x66, 0xba, 0x84, 0, // mov dx, 0x84
        0xf3, 0x6f, // rep outsd
        0xfc, // cld
        0xe6, 0xf4,
    ];
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    let pattern: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    t.mem.write(0x4000, &pattern);
    expect_io(&mut t, 0x80, 1, 2048, true)?;
    ensure!(
        io_data(&mut t, 2048)? == pattern[..2048],
        "first OUTSB chunk differs from guest memory"
    );
    expect_io(&mut t, 0x80, 1, 952, true)?;
    ensure!(
        io_data(&mut t, 952)? == pattern[2048..],
        "second OUTSB chunk differs from guest memory"
    );
    let words: Vec<u8> = (0..1500u16).flat_map(|w| w.to_le_bytes()).collect();
    for (count, range) in [(1024, 0..2048), (476, 2048..3000)] {
        expect_io(&mut t, 0x82, 2, count, false)?;
        fill_io(&mut t, &words[range]);
    }
    expect_io(&mut t, 0x84, 4, 4, true)?;
    let backwards: Vec<u8> = [0xc, 8, 4, 0]
        .iter()
        .flat_map(|o| pattern[*o..*o + 4].to_vec())
        .collect();
    ensure!(
        io_data(&mut t, 16)? == backwards,
        "REP OUTSD with DF=1: elements out of order"
    );
    t.run_to_done()?;
    let got = t.mem.bytes()[0x8000..0x8000 + 3000].to_vec();
    ensure!(
        got == words,
        "REP INSW did not land in guest memory in order"
    );
    let r = t.vcpu.regs().ctx("GET_REGS")?;
    ensure!(
        r.rsi == 0x3ffc && r.rdi == 0x8000 + 3000 && r.rcx == 0,
        "after the string I/O: RSI {:#x} RDI {:#x} RCX {}",
        r.rsi,
        r.rdi,
        r.rcx
    );
    Ok(())
}

fn protected_mode_out(_: &Ctx) -> TestResult {
    // 32-bit flat code: mov eax, 0x12345678; out 0x10, eax; done
    let code = [0xb8, 0x78, 0x56, 0x34, 0x12, 0xe7, 0x10, 0xe6, 0xf4];
    let mut t = TestVm::new(0x10000)?;
    t.mem.write(CODE as usize, &code);
    let s = labguest::protected_mode(t.vcpu.sregs().ctx("GET_SREGS")?);
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    let mut r = t.vcpu.regs().ctx("GET_REGS")?;
    (r.rip, r.rsp, r.rflags) = (CODE, 0x8000, 2);
    t.vcpu.set_regs(&r).ctx("SET_REGS")?;
    expect_io(&mut t, 0x10, 4, 1, true)?;
    ensure!(
        io_data(&mut t, 4)? == 0x1234_5678u32.to_le_bytes(),
        "32-bit OUT data"
    );
    t.run_to_done()?;
    let s = t.vcpu.sregs().ctx("GET_SREGS")?;
    ensure!(
        s.cr0 & 1 == 1 && s.cs.db == 1,
        "left protected mode: CR0 {:#x}",
        s.cr0
    );
    Ok(())
}

fn entry(function: u32, index: Option<u32>, regs: [u32; 4]) -> sys::rvmx_cpuid_entry {
    sys::rvmx_cpuid_entry {
        function,
        index: index.unwrap_or(0),
        flags: if index.is_some() {
            sys::RVMX_CPUID_FLAG_SIGNIFICANT_INDEX
        } else {
            0
        },
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        padding: [0; 3],
    }
}

fn cpuid_table(_: &Ctx) -> TestResult {
    let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
    let supported = rvmx.supported_cpuid().ctx("RVMX_GET_SUPPORTED_CPUID")?;
    let leaf = |l: u32| supported.iter().find(|e| e.function == l);
    let l1 = leaf(1).ok_or(Outcome::Fail("no leaf 1 in the supported table".into()))?;
    ensure!(
        l1.ecx & (1 << 5) == 0 && l1.ecx & (1 << 31) != 0,
        "supported leaf 1 ECX {:#x}",
        l1.ecx
    );
    ensure!(
        leaf(0x4000_0000).is_some_and(|e| e.ebx.to_le_bytes() == *b"rvmx"),
        "no rvmx signature at 0x40000000"
    );
    // Too little room: E2BIG, and nent says how much is needed.
    let mut small = [0u32; 2 + 10];
    small[0] = 1;
    let r = crate::ioctl::raw(
        &rvmx,
        sys::RVMX_GET_SUPPORTED_CPUID,
        small.as_mut_ptr() as usize,
    );
    ensure!(
        r == Err(libc::E2BIG),
        "GET_SUPPORTED_CPUID with room for 1: {r:?}, want E2BIG"
    );
    ensure!(
        small[0] as usize == supported.len(),
        "nent after E2BIG {} , want {}",
        small[0],
        supported.len()
    );

    let queries: [(u32, u32); 5] = [(0, 0), (1, 0), (7, 0), (7, 1), (0x99, 0)];
    let mut code = vec![0xbf, 0x00, 0x50, 0, 0]; // mov edi, 0x5000
    for (l, sub) in queries {
        code.push(0xb8);
        code.extend_from_slice(&l.to_le_bytes());
        code.push(0xb9);
        code.extend_from_slice(&sub.to_le_bytes());
        // cpuid; mov [rdi], eax; mov [rdi+4], ebx; mov [rdi+8], ecx;
        // mov [rdi+12], edx; add rdi, 16
        code.extend_from_slice(&[
            0x0f, 0xa2, 0x89, 0x07, 0x89, 0x5f, 4, 0x89, 0x4f, 8, 0x89, 0x57, 12, 0x48, 0x83, 0xc7,
            16,
        ]);
    }
    code.extend_from_slice(&DONE);
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    let table = [
        entry(0, None, [7, 0x6c6c_6548, 0x0021_646c, 0x726f_5720]),
        entry(1, None, [0x12345, 0x0800, 1 << 31, 0x0789_fbff]),
        entry(7, Some(0), [1, 0xaaaa, 0, 0]),
        entry(7, Some(1), [0, 0xbbbb, 0, 0]),
    ];
    t.vcpu.set_cpuid(&table).ctx("RVMX_SET_CPUID")?;
    t.run_to_done()?;
    let want: Vec<[u32; 4]> = vec![
        [7, 0x6c6c_6548, 0x0021_646c, 0x726f_5720],
        [0x12345, 0x0800, 1 << 31, 0x0789_fbff],
        [1, 0xaaaa, 0, 0],
        [0, 0xbbbb, 0, 0],
        [0, 0, 0, 0],
    ];
    for (i, w) in want.iter().enumerate() {
        let got: Vec<u32> = (0..4)
            .map(|r| t.mem.read_u64(0x5000 + i * 16 + r * 4) as u32)
            .collect();
        ensure!(
            got == w,
            "CPUID {:x?}: guest read {got:x?}, the table says {w:x?}",
            queries[i]
        );
    }
    // The kernel checks nent before reading entries (the safe wrapper
    // refuses such a table itself, so this goes around it).
    let mut header = [sys::RVMX_MAX_CPUID_ENTRIES + 1, 0u32];
    let r = crate::ioctl::raw(&t.vcpu, sys::RVMX_SET_CPUID, header.as_mut_ptr() as usize);
    ensure!(
        r == Err(libc::E2BIG),
        "SET_CPUID with 257 entries: {r:?}, want E2BIG"
    );
    let mut bad = entry(0, None, [0; 4]);
    bad.flags = 2;
    expect_err(
        t.vcpu.set_cpuid(&[bad]),
        libc::EINVAL,
        "SET_CPUID with an unknown flag",
    )?;
    Ok(())
}

fn msr(index: u32, data: u64) -> sys::rvmx_msr_entry {
    sys::rvmx_msr_entry {
        index,
        reserved: 0,
        data,
    }
}

fn msrs(_: &Ctx) -> TestResult {
    const LSTAR: u32 = 0xc000_0082;
    const STAR: u32 = 0xc000_0081;
    const KERNEL_GS_BASE: u32 = 0xc000_0102;
    const EFER: u32 = 0xc000_0080;
    let code = [
        0xb9, 0x82, 0, 0, 0xc0, // mov ecx, LSTAR
        0x0f, 0x32, // rdmsr
        0xe7, 0x10, // out 0x10, eax
        0x89, 0xd0, // mov eax, edx
        0xe7, 0x10, // out 0x10, eax
        0xb9, 0x02, 0x01, 0, 0xc0, // mov ecx, KERNEL_GS_BASE
        0xb8, 0x34, 0x12, 0, 0, // mov eax, 0x1234
        0x31, 0xd2, // xor edx, edx
        0x0f, 0x30, // wrmsr
        0xe6, 0xf4,
    ];
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    let lstar = 0xffff_ffff_8100_0000u64;
    let n = t
        .vcpu
        .set_msrs(&[
            msr(LSTAR, lstar),
            msr(STAR, 0x0023_0010_0000_0000),
            msr(0xdead, 0),
            msr(KERNEL_GS_BASE, 1),
        ])
        .ctx("RVMX_SET_MSRS")?;
    ensure!(
        n == 2,
        "SET_MSRS wrote {n} MSRs, want 2 (it must stop at the unknown 0xdead)"
    );
    let n = t
        .vcpu
        .set_msrs(&[msr(LSTAR, 0x8000_0000_0000_0000)])
        .ctx("RVMX_SET_MSRS")?;
    ensure!(n == 0, "SET_MSRS accepted a non-canonical LSTAR");
    expect_io(&mut t, 0x10, 4, 1, true)?;
    let lo = u32::from_le_bytes(io_data(&mut t, 4)?.try_into().unwrap_or_default());
    expect_io(&mut t, 0x10, 4, 1, true)?;
    let hi = u32::from_le_bytes(io_data(&mut t, 4)?.try_into().unwrap_or_default());
    let seen = (u64::from(hi) << 32) | u64::from(lo);
    ensure!(
        seen == lstar,
        "the guest read LSTAR {seen:#x}, the VMM set {lstar:#x}"
    );
    t.run_to_done()?;
    let mut out = [msr(KERNEL_GS_BASE, 0), msr(EFER, 0), msr(0xdead, 7)];
    let n = t.vcpu.get_msrs(&mut out).ctx("RVMX_GET_MSRS")?;
    ensure!(n == 2, "GET_MSRS read {n} MSRs, want 2");
    ensure!(
        out[0].data == 0x1234,
        "KERNEL_GS_BASE {:#x} after the guest's WRMSR",
        out[0].data
    );
    ensure!(
        out[1].data & 0x500 == 0x500,
        "EFER {:#x} without LME|LMA in long mode",
        out[1].data
    );
    Ok(())
}

fn unknown_msrs_fault_or_exit_to_user(_: &Ctx) -> TestResult {
    let code = [
        0xb9, 0x34, 0x12, 0, 0, // mov ecx, 0x1234
        0x0f, 0x32, // rdmsr
        0xe7, 0x10, // out 0x10, eax
        0xb9, 0x35, 0x12, 0, 0, // mov ecx, 0x1235
        0xb8, 5, 0, 0, 0, // mov eax, 5
        0x31, 0xd2, // xor edx, edx
        0x0f, 0x30, // wrmsr
        0xb9, 0x36, 0x12, 0, 0, // mov ecx, 0x1236
        0x0f, 0x32, // rdmsr
        0xe6, 0xf4,
    ];
    // By default an unknown MSR raises #GP; with no IDT that is a triple
    // fault.
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    t.run_expect(sys::RVMX_EXIT_SHUTDOWN)?;

    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    expect_err(
        crate::ioctl::raw(&t.vm, sys::RVMX_SET_USER_MSR_EXITS, 1)
            .map_err(std::io::Error::from_raw_os_error),
        libc::EINVAL,
        "SET_USER_MSR_EXITS with an unknown reason",
    )?;
    t.vm.set_user_msr_exits(true)
        .ctx("RVMX_SET_USER_MSR_EXITS")?;
    let msr_exit = |t: &mut TestVm| {
        // SAFETY: callers check the exit reason first.
        unsafe { t.vcpu.run_area().__bindgen_anon_1.msr }
    };
    t.run_expect(sys::RVMX_EXIT_X86_RDMSR)?;
    let m = msr_exit(&mut t);
    ensure!(
        m.index == 0x1234 && m.reason == sys::RVMX_MSR_EXIT_REASON_UNKNOWN,
        "RDMSR exit {m:?}"
    );
    t.vcpu.run_area().__bindgen_anon_1.msr.data = 0xabcd;
    expect_io(&mut t, 0x10, 4, 1, true)?;
    ensure!(
        io_data(&mut t, 4)? == 0xabcdu32.to_le_bytes(),
        "the guest did not read the VMM's MSR value"
    );
    t.run_expect(sys::RVMX_EXIT_X86_WRMSR)?;
    let m = msr_exit(&mut t);
    ensure!(m.index == 0x1235 && m.data == 5, "WRMSR exit {m:?}");
    t.run_expect(sys::RVMX_EXIT_X86_RDMSR)?;
    // The VMM refuses this one: #GP, and with no IDT a triple fault.
    t.vcpu.run_area().__bindgen_anon_1.msr.error = 1;
    t.run_expect(sys::RVMX_EXIT_SHUTDOWN)
}

fn xsetbv_within_the_hosts_xcr0(_: &Ctx) -> TestResult {
    let info = std::fs::read_to_string("/proc/cpuinfo").ctx("/proc/cpuinfo")?;
    if !info.split_whitespace().any(|w| w == "avx") {
        return Err(Outcome::Skip("the host has no AVX".into()));
    }
    let code = [
        0x31, 0xc9, // xor ecx, ecx
        0xb8, 7, 0, 0, 0, // mov eax, 7 (x87, SSE, AVX)
        0x31, 0xd2, // xor edx, edx
        0x0f, 0x01, 0xd1, // xsetbv
        0x0f, 0x01, 0xd0, // xgetbv
        0xe7, 0x10, // out 0x10, eax
        0xb8, 5, 0, 0, 0, // mov eax, 5 (AVX without SSE: invalid)
        0x0f, 0x01, 0xd1, // xsetbv: #GP, and without an IDT a triple fault
        0xe6, 0xf4,
    ];
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
    s.cr4 |= (1 << 9) | (1 << 18); // OSFXSR, OSXSAVE
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    expect_io(&mut t, 0x10, 4, 1, true)?;
    ensure!(io_data(&mut t, 4)? == [7, 0, 0, 0], "XCR0 after XSETBV 7");
    t.run_expect(sys::RVMX_EXIT_SHUTDOWN)
}

fn fds_from_another_process_are_eio(_: &Ctx) -> TestResult {
    let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
    let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
    let vcpu = vm.create_vcpu(0).ctx("RVMX_CREATE_VCPU")?;
    // SAFETY: the child only makes raw system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child inherited both fds; every call must fail with EIO.
        let vm_err = crate::ioctl::raw(&vm, sys::RVMX_CREATE_VCPU, 1).err();
        let vcpu_err = crate::ioctl::raw(&vcpu, sys::RVMX_RUN, 0).err();
        let ok = vm_err == Some(libc::EIO) && vcpu_err == Some(libc::EIO);
        // SAFETY: leaving the child at once, without unwinding the parent's state.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    ensure!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "a child process could use the parent's VM or vCPU fd (status {status:#x})"
    );
    vcpu.regs().ctx("the parent's vCPU afterwards")?;
    Ok(())
}

/// `RVMX_RUN` ended with EINTR and `RVMX_EXIT_INTR` in the run area.
pub(crate) fn expect_eintr(t: &mut TestVm, result: std::io::Result<()>, what: &str) -> TestResult {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
        other => return Err(Outcome::Fail(format!("{what}: {other:?}, want EINTR"))),
    }
    let reason = t.vcpu.run_area().exit_reason;
    ensure!(
        reason == sys::RVMX_EXIT_INTR,
        "{what}: exit reason {reason}, want RVMX_EXIT_INTR"
    );
    Ok(())
}
