//! Test guests: a VM with memory at guest-physical 0, one vCPU, and helpers
//! to put code there and run it in real, protected or long mode.

pub use labguest::GuestMem;
use uapi::{sys, Rvmx, VcpuFd, VmFd, DEVICE_PATH};

use crate::ktap::{Context, Outcome};

pub fn region(
    slot: u32,
    gpa: u64,
    size: u64,
    uaddr: u64,
    flags: u32,
) -> sys::rvmx_userspace_memory_region {
    sys::rvmx_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: uaddr,
    }
}

/// A VM with `mem` at guest-physical 0 (slot 0) and vCPU 0.
pub struct TestVm {
    pub vm: VmFd,
    pub vcpu: VcpuFd,
    pub mem: GuestMem,
}

/// Where test code starts.
pub const CODE: u64 = 0x1000;

/// The port a test guest writes to when it is done. (HLT no longer ends a
/// run: rvmx's local APIC sleeps until an interrupt wakes the vCPU.)
pub const DONE_PORT: u16 = 0xf4;
/// `out 0xf4, al`: the last instruction of a test guest.
pub const DONE: [u8; 2] = [0xe6, DONE_PORT as u8];

impl TestVm {
    pub fn new(mem_size: usize) -> Result<Self, Outcome> {
        let rvmx = Rvmx::open(DEVICE_PATH).ctx("open")?;
        let vm = rvmx.create_vm().ctx("RVMX_CREATE_VM")?;
        let mem = GuestMem::new(mem_size).ctx("mmap guest memory")?;
        // SAFETY: `mem` is used for nothing but the guest and lives in the
        // same struct as the VM (and rvmx pins the pages anyway).
        unsafe { vm.set_user_memory_region(region(0, 0, mem_size as u64, mem.addr(), 0)) }
            .ctx("RVMX_SET_USER_MEMORY_REGION")?;
        let vcpu = vm.create_vcpu(0).ctx("RVMX_CREATE_VCPU")?;
        Ok(Self { vm, vcpu, mem })
    }

    /// Real mode, CS:IP = 0:CODE, with `code` there.
    pub fn real_mode(mem_size: usize, code: &[u8]) -> Result<Self, Outcome> {
        let mut t = Self::new(mem_size)?;
        t.mem.write(CODE as usize, code);
        let mut s = t.vcpu.sregs().ctx("GET_SREGS")?;
        s.cs.selector = 0;
        s.cs.base = 0;
        t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
        let mut r = t.vcpu.regs().ctx("GET_REGS")?;
        r.rip = CODE;
        r.rflags = 2;
        t.vcpu.set_regs(&r).ctx("SET_REGS")?;
        Ok(t)
    }

    /// 64-bit mode with the first 1 GiB identity-mapped (2 MiB pages),
    /// RIP = CODE, RSP = the top of memory.
    pub fn long_mode(mem_size: usize, code: &[u8]) -> Result<Self, Outcome> {
        let mut t = Self::new(mem_size)?;
        t.mem.write(CODE as usize, code);
        labguest::identity_map(t.mem.bytes());
        let s = labguest::long_mode(t.vcpu.sregs().ctx("GET_SREGS")?);
        t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
        let mut r = t.vcpu.regs().ctx("GET_REGS")?;
        (r.rip, r.rsp, r.rflags) = (CODE, mem_size as u64, 2);
        t.vcpu.set_regs(&r).ctx("SET_REGS")?;
        Ok(t)
    }

    /// Runs until an exit; returns its reason.
    pub fn run(&mut self) -> Result<u32, Outcome> {
        self.vcpu.run().ctx("RVMX_RUN")?;
        Ok(self.vcpu.run_area().exit_reason)
    }

    /// Runs and expects `reason`.
    pub fn run_expect(&mut self, reason: u32) -> Result<(), Outcome> {
        let got = self.run()?;
        if got != reason {
            return Err(Outcome::Fail(format!(
                "{}, want exit {reason}",
                self.describe_exit(got)
            )));
        }
        Ok(())
    }

    /// The exit `got` that just happened, with its details and RIP, for a
    /// failure message.
    pub fn describe_exit(&mut self, got: u32) -> String {
        {
            let rip = self.vcpu.regs().map(|r| r.rip).unwrap_or(0);
            let detail = if got == sys::RVMX_EXIT_INTERNAL_ERROR {
                // SAFETY: exit_reason says the union holds `internal`.
                let i = unsafe { self.vcpu.run_area().__bindgen_anon_1.internal };
                format!(" (suberror {}, data {:x?})", i.suberror, &i.data[..4])
            } else if got == sys::RVMX_EXIT_FAIL_ENTRY {
                // SAFETY: exit_reason says the union holds `fail_entry`.
                let f = unsafe { self.vcpu.run_area().__bindgen_anon_1.fail_entry };
                format!(" (hardware reason {:#x})", f.hardware_entry_failure_reason)
            } else if got == sys::RVMX_EXIT_IO {
                let io = self.io();
                format!(
                    " (port {:#x}, size {}, out {})",
                    io.port, io.size, io.direction
                )
            } else {
                String::new()
            };
            format!("exit {got}{detail} at rip {rip:#x}")
        }
    }

    /// Runs and expects the guest's `DONE`.
    pub fn run_to_done(&mut self) -> Result<(), Outcome> {
        self.run_expect(sys::RVMX_EXIT_IO)?;
        let io = self.io();
        if io.direction != sys::RVMX_EXIT_IO_OUT as u8 || io.port != DONE_PORT {
            let rip = self.vcpu.regs().map(|r| r.rip).unwrap_or(0);
            return Err(Outcome::Fail(format!(
                "I/O exit to port {:#x} at rip {rip:#x}, want the guest's DONE",
                io.port
            )));
        }
        Ok(())
    }

    pub fn io(&mut self) -> sys::rvmx_exit_io {
        // SAFETY: callers check the exit reason first.
        unsafe { self.vcpu.run_area().__bindgen_anon_1.io }
    }
}

impl TestVm {
    /// `long_mode` with `labguest::write_idt`'s GDT and IDT: each vector's
    /// stub saves RAX, RCX and RDX, puts the vector in EAX and jumps to the
    /// handler whose address the guest stored at `labguest::HANDLER_PTR`.
    pub fn long_mode_idt(mem_size: usize, code: &[u8]) -> Result<Self, Outcome> {
        let mut t = Self::long_mode(mem_size, code)?;
        labguest::write_idt(t.mem.bytes());
        let s = labguest::idt_sregs(t.vcpu.sregs().ctx("GET_SREGS")?);
        t.vcpu.set_sregs(&s).ctx("SET_SREGS")?;
        Ok(t)
    }
}
