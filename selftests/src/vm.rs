//! Tests of VMs and vCPUs: fds, memory slots, and guests running in each
//! processor mode, each exit kind.

use uapi::{sys, Rvmx, DEVICE_PATH};

use crate::guest::{region, GuestMem, TestVm, CODE};
use crate::ioctl::errno_name;
use crate::ktap::{Context, Outcome, Test, TestResult};
use crate::{ensure, Ctx};

pub const TESTS: &[Test] = &[
    Test { name: "vm_and_vcpu_fds", run: vm_and_vcpu_fds },
    Test { name: "memslot_rules", run: memslot_rules },
    Test { name: "real_mode_out_hlt", run: real_mode_out_hlt },
    Test { name: "long_mode_cpuid_vmcall", run: long_mode_cpuid_vmcall },
    Test { name: "port_in_completes", run: port_in_completes },
    Test { name: "triple_fault_is_shutdown", run: triple_fault_is_shutdown },
    Test { name: "bad_guest_state_fails_entry", run: bad_guest_state_fails_entry },
    Test { name: "immediate_exit_is_eintr", run: immediate_exit_is_eintr },
    Test { name: "vms_are_isolated", run: vms_are_isolated },
];

fn expect_err<T>(r: std::io::Result<T>, want: i32, what: &str) -> TestResult {
    match r {
        Err(e) if e.raw_os_error() == Some(want) => Ok(()),
        Err(e) => Err(Outcome::Fail(format!("{what}: {e}, want {}", errno_name(want)))),
        Ok(_) => Err(Outcome::Fail(format!("{what}: succeeded, want {}", errno_name(want)))),
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
    expect_err(vm.create_vcpu(sys::RVMX_MAX_VCPUS), libc::EINVAL, "vCPU id beyond the limit")?;
    let v1 = vm.create_vcpu(1).ctx("vCPU 1")?;
    // Closing the VM fd first leaves the vCPUs working.
    drop(vm);
    v1.regs().ctx("GET_REGS after the VM fd was closed")?;
    drop(v0);
    drop(v1);
    Ok(())
}

fn memslot_rules(_: &Ctx) -> TestResult {
    let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
    let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
    let mem = GuestMem::new(0x10_0000).ctx("mmap")?;
    let a = mem.addr();
    // SAFETY (all calls): `mem` outlives the VM and is used only by it.
    let set = |slot, gpa, size, uaddr, flags| unsafe { vm.set_user_memory_region(region(slot, gpa, size, uaddr, flags)) };
    set(0, 0, 0x8000, a, 0).ctx("slot 0")?;
    expect_err(set(1, 0x1000, 0x1000, a + 0x8000, 0), libc::EEXIST, "overlapping slot")?;
    expect_err(set(1, 0x8800, 0x1000, a + 0x8000, 0), libc::EINVAL, "unaligned guest address")?;
    expect_err(set(1, 0x8000, 0x1800, a + 0x8000, 0), libc::EINVAL, "unaligned size")?;
    expect_err(set(1, 0x8000, 0x1000, a + 0x8010, 0), libc::EINVAL, "unaligned user address")?;
    expect_err(set(1, u64::MAX & !0xfff, 0x2000, a, 0), libc::EINVAL, "wrapping guest range")?;
    expect_err(set(1, 0x8000, 0x1000, a, 1), libc::EINVAL, "unknown flag")?;
    expect_err(set(sys::RVMX_MAX_MEM_SLOTS, 0x8000, 0x1000, a, 0), libc::EINVAL, "slot number")?;
    expect_err(set(1, 0x8000, 0x1000, 0x1000, 0), libc::EFAULT, "unmapped user memory")?;
    expect_err(set(0, 0x1000, 0x8000, a, 0), libc::EINVAL, "moving a slot")?;
    set(0, 0, 0x8000, a, sys::RVMX_MEM_READONLY).ctx("making slot 0 read-only")?;
    set(0, 0, 0x8000, a, 0).ctx("making slot 0 writable again")?;
    set(1, 0x8000, 0x8000, a + 0x8000, 0).ctx("adjacent slot 1")?;
    set(0, 0, 0, 0, 0).ctx("deleting slot 0")?;
    expect_err(set(0, 0, 0, 0, 0), libc::EINVAL, "deleting it again")?;
    set(2, 0, 0x8000, a, 0).ctx("reusing the freed range")?;
    Ok(())
}

fn real_mode_out_hlt(_: &Ctx) -> TestResult {
    // mov al, 0x42; out 0x10, al; mov dx, 0x3f8; mov ax, 0x1234; out dx, ax; hlt
    let code = [0xb0, 0x42, 0xe6, 0x10, 0xba, 0xf8, 0x03, 0xb8, 0x34, 0x12, 0x66, 0xef, 0xf4];
    let mut t = TestVm::real_mode(0x10000, &code)?;
    t.run_expect(sys::RVMX_EXIT_IO)?;
    let io = t.io();
    ensure!(io.direction == sys::RVMX_EXIT_IO_OUT as u8 && io.port == 0x10 && io.size == 1 && io.count == 1,
        "first exit: {io:?}");
    let data = t.vcpu.run_data(io.data_offset, 1).ok_or(Outcome::Fail("data offset out of range".into()))?[0];
    ensure!(data == 0x42, "OUT data {data:#x}, want 0x42");
    t.run_expect(sys::RVMX_EXIT_IO)?;
    let io = t.io();
    ensure!(io.port == 0x3f8 && io.size == 4, "second exit (32-bit OUT): {io:?}");
    let data = t.vcpu.run_data(io.data_offset, 4).unwrap_or_default().to_vec();
    ensure!(data == [0x34, 0x12, 0, 0], "OUT data {data:x?}");
    t.run_expect(sys::RVMX_EXIT_HLT)?;
    let rip = t.vcpu.regs().ctx("GET_REGS")?.rip;
    ensure!(rip == CODE + code.len() as u64, "RIP after HLT {rip:#x}");
    Ok(())
}

fn long_mode_cpuid_vmcall(_: &Ctx) -> TestResult {
    // mov eax, 1; cpuid; mov rbx, rcx (ECX of leaf 1); mov rax, 0x1234;
    // mov rcx, 0x5678; vmcall; hlt
    let code = [
        0xb8, 1, 0, 0, 0, 0x0f, 0xa2, 0x48, 0x89, 0xcb, 0x48, 0xc7, 0xc0, 0x34, 0x12, 0, 0,
        0x48, 0xc7, 0xc1, 0x78, 0x56, 0, 0, 0x0f, 0x01, 0xc1, 0xf4,
    ];
    let mut t = TestVm::long_mode(0x20_0000, &code)?;
    t.run_expect(sys::RVMX_EXIT_HYPERCALL)?;
    // SAFETY: the exit reason says the union holds `hypercall`.
    let call = unsafe { t.vcpu.run_area().__bindgen_anon_1.hypercall };
    ensure!(call.nr == 0x1234, "hypercall nr {:#x}", call.nr);
    let ecx = call.args[0];
    ensure!(ecx & (1 << 31) != 0, "CPUID.1:ECX {ecx:#x} lacks the hypervisor bit");
    ensure!(ecx & (1 << 5) == 0, "CPUID.1:ECX {ecx:#x} shows VMX to the guest");
    ensure!(call.args[1] == 0x5678, "hypercall arg 1 (RCX) {:#x}", call.args[1]);
    t.vcpu.run_area().__bindgen_anon_1.hypercall.ret = 0xabcd;
    t.run_expect(sys::RVMX_EXIT_HLT)?;
    let regs = t.vcpu.regs().ctx("GET_REGS")?;
    ensure!(regs.rax == 0xabcd, "RAX after the hypercall {:#x}, want its ret 0xabcd", regs.rax);
    let sregs = t.vcpu.sregs().ctx("GET_SREGS")?;
    ensure!(sregs.efer & (1 << 10) != 0, "EFER {:#x} without LMA in long mode", sregs.efer);
    Ok(())
}

fn port_in_completes(_: &Ctx) -> TestResult {
    // mov eax, 0xffffffff (real mode: 66 b8); in al, 0x60; in ax, dx (dx=0x71); hlt
    let code = [0x66, 0xb8, 0xff, 0xff, 0xff, 0xff, 0xe4, 0x60, 0xba, 0x71, 0, 0xed, 0xf4];
    let mut t = TestVm::real_mode(0x10000, &code)?;
    t.run_expect(sys::RVMX_EXIT_IO)?;
    let io = t.io();
    ensure!(io.direction == sys::RVMX_EXIT_IO_IN as u8 && io.port == 0x60 && io.size == 1, "{io:?}");
    if let Some(d) = t.vcpu.run_data(io.data_offset, 1) {
        d[0] = 0x5a;
    }
    t.run_expect(sys::RVMX_EXIT_IO)?;
    let rax = t.vcpu.regs().ctx("GET_REGS")?.rax;
    ensure!(rax == 0xffff_ff5a, "RAX after IN AL {rax:#x}, want 0xffffff5a (upper bytes kept)");
    let io = t.io();
    ensure!(io.port == 0x71 && io.size == 2, "{io:?}");
    if let Some(d) = t.vcpu.run_data(io.data_offset, 2) {
        d.copy_from_slice(&[0x22, 0x11]);
    }
    t.run_expect(sys::RVMX_EXIT_HLT)?;
    let rax = t.vcpu.regs().ctx("GET_REGS")?.rax;
    ensure!(rax == 0xffff_1122, "RAX after IN AX {rax:#x}, want 0xffff1122");
    Ok(())
}

fn triple_fault_is_shutdown(_: &Ctx) -> TestResult {
    // lidt [zero-limit descriptor at 0x2000]; int3: no IDT → triple fault.
    let code = [0x0f, 0x01, 0x1e, 0x00, 0x20, 0xcc];
    let mut t = TestVm::real_mode(0x10000, &code)?;
    t.mem.write(0x2000, &[0; 6]);
    t.run_expect(sys::RVMX_EXIT_SHUTDOWN)
}

fn bad_guest_state_fails_entry(_: &Ctx) -> TestResult {
    let mut t = TestVm::long_mode(0x20_0000, &[0xf4])?;
    // A 64-bit code segment with CS.D set is invalid guest state.
    let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
    s.cs.db = 1;
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    t.run_expect(sys::RVMX_EXIT_FAIL_ENTRY)?;
    // SAFETY: the exit reason says the union holds `fail_entry`.
    let f = unsafe { t.vcpu.run_area().__bindgen_anon_1.fail_entry };
    ensure!(f.hardware_entry_failure_reason == 33, "entry failure reason {}, want 33 (invalid guest state)",
        f.hardware_entry_failure_reason);
    // The host is fine and so is the vCPU once its state is repaired.
    s.cs.db = 0;
    t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
    t.run_expect(sys::RVMX_EXIT_HLT)
}

fn immediate_exit_is_eintr(_: &Ctx) -> TestResult {
    let mut t = TestVm::real_mode(0x10000, &[0xf4])?;
    t.vcpu.run_area().immediate_exit = 1;
    match t.vcpu.run() {
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
        other => return Err(Outcome::Fail(format!("RUN with immediate_exit: {other:?}, want EINTR"))),
    }
    ensure!(t.vcpu.run_area().exit_reason == sys::RVMX_EXIT_INTR, "exit reason {}", t.vcpu.run_area().exit_reason);
    t.vcpu.run_area().immediate_exit = 0;
    t.run_expect(sys::RVMX_EXIT_HLT)
}

fn vms_are_isolated(_: &Ctx) -> TestResult {
    // Each guest writes its own marker at 0x3000 and reads 0x3000 of the
    // other VM's... which it cannot address: it sees only its own memory.
    // mov rax, [0x3000]; mov [0x3008], rax; mov dword [0x3000], imm; hlt
    let code = |marker: u8| {
        vec![0x48, 0x8b, 0x04, 0x25, 0, 0x30, 0, 0, 0x48, 0x89, 0x04, 0x25, 8, 0x30, 0, 0,
             0xc7, 0x04, 0x25, 0, 0x30, 0, 0, marker, 0, 0, 0, 0xf4]
    };
    let mut a = TestVm::long_mode(0x20_0000, &code(0xaa))?;
    let mut b = TestVm::long_mode(0x20_0000, &code(0xbb))?;
    a.mem.write_u64(0x3000, 0x1111);
    b.mem.write_u64(0x3000, 0x2222);
    a.run_expect(sys::RVMX_EXIT_HLT)?;
    b.run_expect(sys::RVMX_EXIT_HLT)?;
    let (a_saw, b_saw) = (a.mem.read_u64(0x3008), b.mem.read_u64(0x3008));
    ensure!(a_saw == 0x1111 && b_saw == 0x2222, "guests read {a_saw:#x} and {b_saw:#x}, want their own 0x1111/0x2222");
    let (a_now, b_now) = (a.mem.read_u64(0x3000), b.mem.read_u64(0x3000));
    ensure!(a_now == 0xaa && b_now == 0xbb, "markers {a_now:#x} {b_now:#x}: a guest wrote the other's memory");
    Ok(())
}
